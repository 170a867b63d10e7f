"""COCO at full size: TFRecord shards made once (data.coco.convert), read by a parallel, shardable tf.data reader.

    split = open_coco(data_dir, "train")      # converts on first use, then opens in well under a second
    dataset = data.coco.make_dataset(split, batch_size=2, training=True, seed=0, input_context=ctx)

Why plain TFRecord shards and not a TFDS builder: users' own COCO-format
datasets (any JSON + image folder) are the common case, and a builder needs a
registered name, version and fixed paths per dataset; TFDS also rebuilds a split
from scratch when a build is killed and builds in one process. Plain shards
convert in parallel, resume, live wherever the user says, and are read with
tf.data alone (any TFRecord tool reads them too).

Records folder (default DATA_DIR/records/{split}2017_mask{S}):
    plan.json                               what is being converted (source sha1, settings)
    categories.json                         [{"id": COCO id, "name": str}], sorted by id
    shard-00000-of-00116.tfrecord ...       one tf.train.Example per image, images in id order
    shard-00000-of-00116.json ...           per shard: num_images, num_instances, instance_counts, crowd_counts, dropped
    manifest.json                           written last: the records are complete
    lock                                    flock'ed while a process converts (others wait)
The shards hold the images' bytes: they take about as much disk as the image
folder (train2017: 19 GB) plus S x S bytes per instance (2.7 GB at S = 56).

Example features (all instances of an image, in annotation-file order; the
reader keeps the first max_instances, as data.coco.read_coco does):
    image/encoded     bytes      the image file's bytes, unchanged
    image/file_name   bytes      file_name from the JSON (for messages)
    image/id          int64      COCO image id
    image/height      int64      original size (checked against the file)
    image/width       int64
    instances/boxes   float [4N] (y1, x1, y2, x2) original pixels, continuous coordinates
    instances/class_ids int64 [N] contiguous 1..K (categories.json order)
    instances/masks   bytes      N x S x S uint8, row-major: box crops (data.coco.masks.crop_mask)
    crowd/boxes       float [4C] iscrowd regions, as boxes

Reading: shards are listed from the manifest (no JSON parsing); training
shuffles the shard order every epoch, interleaves INTERLEAVE shards and shuffles
the records through a buffer of SHUFFLE_BUFFER, all keyed by (seed, epoch); evaluation
reads in image-id order. Memory is bounded by the buffer, whatever the dataset's
size (COCO: 1024 records, about 170 MB).
"""
import dataclasses
import functools
import hashlib
import json
import os
import sys

import numpy as np
import tensorflow as tf

from data.coco.instances import RECORD_FEATURES, Categories, empty_drop_counts, split_paths
from data.coco.convert import MANIFEST, RecordsMismatch, convert

SHUFFLE_BUFFER = 1024
INTERLEAVE = 4


@dataclasses.dataclass
class CocoRecords:
    """A converted split, ready for data.coco.make_dataset (the same attributes as data.coco.CocoSplit, no records).

    coco (pycocotools COCO of the source JSON, for COCOeval) is loaded on first use.
    """

    records_dir: str
    manifest: dict
    categories: Categories
    mask_size: int
    max_instances: int
    skip_images_without_annotations: bool = False

    @property
    def shard_paths(self):
        return [os.path.join(self.records_dir, s["file"]) for s in self.manifest["shards"]]

    def image_counts(self, shards=None):
        """Per shard, the instance count of each image (those the reader yields and those it skips as empty)."""
        shards = self.manifest["shards"] if shards is None else shards
        return [s["instance_counts"] for s in shards]

    @property
    def num_images(self):
        counts = [n for shard in self.image_counts() for n in shard]
        return sum(1 for n in counts if n or not self.skip_images_without_annotations)

    @property
    def dropped(self):
        dropped = empty_drop_counts()
        for shard in self.manifest["shards"]:
            for key, n in shard["dropped"].items():
                dropped[key] = dropped.get(key, 0) + n
            for key, counts in (("instances_over_max_instances", shard["instance_counts"]),
                                ("crowd_regions_over_max_instances", shard["crowd_counts"])):
                dropped[key] += sum(max(0, n - self.max_instances) for n in counts)
            if self.skip_images_without_annotations:
                dropped["images_without_annotations_skipped"] += shard["instance_counts"].count(0)
        for kind, n in self.manifest["skipped_in_json"].items():
            dropped[f"{kind}_skipped"] = dropped.get(f"{kind}_skipped", 0) + n
        return dropped

    def summary(self):
        instances = sum(min(n, self.max_instances) for shard in self.image_counts() for n in shard)
        parts = [f"{self.num_images} images", f"{instances} instances"]
        parts += [f"{n} {reason.replace('_', ' ')}" for reason, n in self.dropped.items() if n]
        return ", ".join(parts)

    @property
    def records(self):
        """Every image read back as data.coco.CocoSplit.records holds them (all in memory: for small splits)."""
        image_dir = self.manifest["image_dir"]
        return [dict(image_id=int(e["image_id"]), path=os.path.join(image_dir, e["file_name"].decode()),
                     height=int(e["original_size"][0]), width=int(e["original_size"][1]), boxes=e["boxes"],
                     class_ids=e["class_ids"], masks=e["masks"], crowd_boxes=e["crowd_boxes"])
                for e in read_records(self, training=False).as_numpy_iterator()]

    @functools.cached_property
    def coco(self):
        import contextlib
        import io

        from pycocotools.coco import COCO

        from data.coco.annotations import load_instances

        index = load_instances(self.manifest["source"]["path"], self.manifest["image_dir"], skip_bad=True)
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = index.document
            coco.createIndex()
        return coco


def default_records_dir(data_dir, split, mask_size, parent=None):
    """DATA_DIR/records/{split}2017_mask{S}, or (DATA_DIR read-only, no records there yet) the same under
    ~/.cache/keras-segmentation/coco/<hash of DATA_DIR's path>/."""
    name = f"{split}2017_mask{mask_size}"
    if parent:
        return os.path.join(parent, name)
    beside = os.path.join(data_dir, "records", name)
    if os.path.exists(beside) or os.access(data_dir, os.W_OK):
        return beside
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha1(os.path.abspath(data_dir).encode()).hexdigest()[:12]
    return os.path.join(cache, "keras-segmentation", "coco", digest, name)


def open_coco(data_dir, split, *, mask_size=56, max_instances=100, skip_images_without_annotations=False,
              skip_bad=False, records_dir=None, num_workers=None, progress=None):
    """The records of DATA_DIR's split (official layout), converting them first if they are not there.

    records_dir: where they are (default DATA_DIR/records/{split}2017_mask{S}).
    The first use converts with a message (minutes for COCO train2017); later
    uses check the annotation file is the one converted (size and mtime, else
    its sha1) and open the manifest. progress: the conversion's data.progress.Progress
    (None: shown on stderr).
    """
    ann_path, image_dir = split_paths(data_dir, split)
    records_dir = records_dir or default_records_dir(data_dir, split, mask_size)
    manifest_path = os.path.join(records_dir, MANIFEST)
    if not os.path.exists(manifest_path):
        print(f"COCO {split}: no records in {records_dir} yet; converting once (later runs read them; "
              f"`python -m data.coco prepare {data_dir}` does this ahead)", file=sys.stderr, flush=True)
        try:
            convert(ann_path, image_dir, records_dir, mask_size=mask_size, num_workers=num_workers,
                    skip_bad=skip_bad, progress=progress)
        except PermissionError as error:
            raise PermissionError(f"cannot write COCO records to {records_dir} ({error.strerror}): "
                                  f"convert elsewhere with python -m data.coco prepare --out DIR") from None
    records = open_records(records_dir, max_instances=max_instances,
                           skip_images_without_annotations=skip_images_without_annotations)
    _check_source(records, ann_path)
    return records


def open_records(records_dir, *, max_instances=100, skip_images_without_annotations=False):
    """A finished records folder (manifest.json present) -> CocoRecords. No annotation JSON is read."""
    path = os.path.join(records_dir, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {records_dir} holds no finished COCO records "
                                f"(python -m data.coco prepare writes them)")
    with open(path) as f:
        manifest = json.load(f)
    with open(os.path.join(records_dir, manifest["categories"])) as f:
        table = json.load(f)
    categories = Categories(tuple(c["id"] for c in table), tuple(c["name"] for c in table))
    return CocoRecords(records_dir, manifest, categories, manifest["mask_size"], max_instances,
                       skip_images_without_annotations)


def _check_source(records, ann_path):
    made_from = records.manifest["source"]
    stat = os.stat(ann_path)
    if (stat.st_size, stat.st_mtime_ns) == (made_from["size"], made_from["mtime_ns"]):
        return
    with open(ann_path, "rb") as f:
        if hashlib.sha1(f.read()).hexdigest() != made_from["sha1"]:
            raise RecordsMismatch(f"{ann_path} has changed since the records in {records.records_dir} were made "
                                  f"from it: delete that folder to convert again")


def read_records(records, *, training, seed=None, input_context=None, prepare=None):
    """Examples (see data.coco.prepare_example) of a CocoRecords: the reader behind make_dataset.

    Training: endless, epoch after epoch; eval: once, in image-id order, with a
    known length. input_context: pipeline i of n reads shards i, i + n, ... (or,
    with fewer shards than pipelines, every n-th example from i), so the n
    pipelines see disjoint shares that together are the whole split.
    prepare: a function of one example (make_dataset's prepare_example), run in
    the map that parses it: the dataset then holds its results. One parallel
    map instead of two saves a hand-over between threads per image (about 0.04
    CPU ms here).
    """
    shards = list(zip(records.shard_paths, records.image_counts()))
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline = input_context.input_pipeline_id if input_context else 0
    by_example = num_pipelines > len(shards)
    if num_pipelines > 1 and not by_example:
        shards = shards[pipeline::num_pipelines]
    if training and by_example and seed is None:
        raise ValueError("sharding examples across input pipelines needs a seed (each pipeline must read "
                         "the same order)")
    files = [path for path, _ in shards]
    counts = [n for _, shard_counts in shards for n in shard_counts]
    if by_example:
        counts = counts[pipeline::num_pipelines]
    keep = [n > 0 or not records.skip_images_without_annotations for n in counts]
    if not any(keep):
        raise ValueError(f"{records.records_dir}: no images to read (all skipped as empty?)")

    def share(dataset):
        return dataset.shard(num_pipelines, pipeline) if by_example else dataset

    if training:
        # Every shuffle is keyed by (seed, epoch) alone, so a resumed run's .skip(steps) sees the same
        # order. Without a seed, one random key for the whole run.
        key = int(np.random.default_rng(seed).integers(2 ** 62))

        def one_epoch(epoch):
            names = tf.random.experimental.stateless_shuffle(tf.constant(files), seed=tf.stack([key, epoch]))
            serialized = tf.data.Dataset.from_tensor_slices(names).interleave(
                tf.data.TFRecordDataset, cycle_length=min(len(files), INTERLEAVE),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            # tf.data's buffer shuffle moves the records it holds; permuting batched windows of them
            # (stateless_shuffle between batch and unbatch) copied each one twice more: 0.07 CPU ms per
            # 480x640 image here (BENCHMARKS.md 2b). Its seed pair would take the global seed
            # (tf.random.set_seed) as its first half, and a global seed of 0 fails on a tensor op seed:
            # this function's graph gets none, so the pair is (TF's default, a draw from (seed, epoch)).
            tf.compat.v1.get_default_graph().seed = None
            epoch_seed = tf.random.stateless_uniform([], seed=tf.stack([key, epoch]), minval=None, dtype=tf.int64)
            serialized = share(serialized).shuffle(SHUFFLE_BUFFER, seed=epoch_seed)
            return serialized.map(lambda s: (s, epoch))

        dataset = tf.data.Dataset.counter().flat_map(one_epoch)
    else:
        dataset = share(tf.data.TFRecordDataset(files)).map(lambda s: (s, tf.constant(0, tf.int64)))
    if records.skip_images_without_annotations:
        # Before the full parse (and prepare's decoding): reading one feature of a record is cheap.
        dataset = dataset.filter(lambda serialized, epoch: tf.size(tf.io.parse_single_example(
            serialized, {"instances/class_ids": RECORD_FEATURES["instances/class_ids"]})["instances/class_ids"]) > 0)

    def parse(serialized, epoch):
        example = _parse(serialized, epoch, mask_size=records.mask_size, max_instances=records.max_instances)
        return example if prepare is None else prepare(example)

    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if not training:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(sum(keep)))
    return dataset


def _parse(serialized, epoch, *, mask_size, max_instances):
    features = tf.io.parse_single_example(serialized, RECORD_FEATURES)
    masks = tf.reshape(tf.io.decode_raw(features["instances/masks"], tf.uint8), [-1, mask_size, mask_size])
    return dict(
        image_bytes=features["image/encoded"], file_name=features["image/file_name"],
        image_id=features["image/id"], epoch=epoch,
        original_size=tf.cast(tf.stack([features["image/height"], features["image/width"]]), tf.int32),
        boxes=features["instances/boxes"][:max_instances],
        class_ids=tf.cast(features["instances/class_ids"][:max_instances], tf.int32),
        masks=masks[:max_instances], crowd_boxes=features["crowd/boxes"][:max_instances])

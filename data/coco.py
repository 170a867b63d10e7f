"""COCO instances: the split readers and the tf.data pipeline (masks, records, results and COCOeval beside it).

Layout read (the official one):

    DATA_DIR/annotations/instances_{train,val}2017.json
    DATA_DIR/{train,val}2017/*.jpg

read_coco converts a split once into TFRecord shards (data.coco_convert; also
`python -m data.coco prepare DATA_DIR`) and reads those (data.coco_records);
read_coco(..., in_memory=True) keeps the whole split in memory instead.

Conventions used by everything that consumes this module:
- Boxes are [y1, x1, y2, x2] float32 in absolute pixels, continuous coordinates
  (pixel (i, j) covers [i, i+1) x [j, j+1)), so COCO's [x, y, w, h] is
  [y, x, y+h, x+w]. In the tf.data elements they are in pixels of the resized
  image; in reader records, of the original image.
- Class ids are contiguous: 0 = background/padding, 1..K for the categories the
  JSON lists, sorted by COCO id (`Categories` maps both ways).
- Instance masks are stored compactly: each instance's mask resampled inside its
  box to mask_size x mask_size (default 56), uint8 0..255 (soft at the edges;
  threshold at 128 for a binary mask). Targets for any RoI are cut from these.
- Images reach the model as decoded: uint8 at the file's own size (flipped when
  training), zero-padded to the batch's largest. The model resizes each to its
  element's image_size (resized_size: the short side to short_side unless the
  long side passes long_side), normalises and pads to /32
  (models.mask_rcnn.transform.detector_inputs), as torchvision's
  GeneralizedRCNNTransform does inside its model: a batch holds 0.9 MB per
  480x640 image instead of a 10 MB float32 800x1066 one.
"""
import contextlib
import dataclasses
import functools
import io
import itertools
import logging
import os

import numpy as np
import tensorflow as tf
from pycocotools.coco import COCO

from data.coco_json import CocoFileNotFound, CocoInputError, load_instances  # noqa: F401  (CLIs catch these)
from data.coco_masks import annotation_mask, crop_mask  # noqa: F401  (part of this module's API)
from data.coco_results import SEGM_METRICS, evaluate_segm, segm_results, write_results  # noqa: F401  (likewise)

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class Categories:
    """COCO category ids <-> contiguous class ids (0 = background, 1..K in COCO-id order)."""

    coco_ids: tuple  # coco_ids[k - 1] is the COCO id of contiguous class k
    names: tuple

    @classmethod
    def from_index(cls, index):
        """From a data.coco_json.CocoIndex (or anything with categories [(id, name)] sorted by id)."""
        return cls(tuple(int(i) for i, _ in index.categories), tuple(name for _, name in index.categories))

    @classmethod
    def from_coco(cls, coco):
        cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
        return cls(tuple(int(c["id"]) for c in cats), tuple(c["name"] for c in cats))

    @property
    def num_classes(self):
        """K, the number of object classes (background not counted)."""
        return len(self.coco_ids)

    def to_contiguous(self, coco_ids):
        """COCO ids (int or array) -> contiguous ids 1..K (int32 array). Unknown ids raise ValueError."""
        lookup = {cid: k + 1 for k, cid in enumerate(self.coco_ids)}
        ids = np.asarray(coco_ids)
        unknown = sorted({int(i) for i in ids.ravel()} - set(lookup))
        if unknown:
            raise ValueError(f"category ids {unknown} are not in the annotation file's categories")
        return np.vectorize(lookup.__getitem__, otypes=[np.int32])(ids) if ids.size else ids.astype(np.int32)

    def to_coco(self, class_ids):
        """Contiguous ids 1..K (int or array) -> COCO ids (int64 array). 0 or > K raise ValueError."""
        ids = np.asarray(class_ids, np.int64)
        if ids.size and (ids.min() < 1 or ids.max() > self.num_classes):
            raise ValueError(f"class ids must be in 1..{self.num_classes}, got {np.unique(ids).tolist()}")
        return np.asarray(self.coco_ids, np.int64)[ids - 1]


@dataclasses.dataclass
class CocoSplit:
    """One split read into memory.

    records: one dict per image: image_id int, path str, height/width int
        (original size), boxes [N, 4] float32 (original pixels), class_ids [N] int32
        (1..K), masks [N, S, S] uint8 (per-instance crops, see module doc),
        crowd_boxes [C, 4] float32 (iscrowd regions: not targets, ignore regions).
    dropped: counts of what the reader left out, by reason (all keys present).
    """

    coco: COCO
    categories: Categories
    records: list
    dropped: dict
    mask_size: int
    max_instances: int

    def summary(self):
        parts = [f"{len(self.records)} images", f"{sum(len(r['class_ids']) for r in self.records)} instances"]
        parts += [f"{n} {reason.replace('_', ' ')}" for reason, n in self.dropped.items() if n]
        return ", ".join(parts)


def read_coco(data_dir, split, *, mask_size=56, max_instances=100, skip_images_without_annotations=False,
              skip_bad=False, in_memory=False, records_dir=None):
    """Read the split DATA_DIR/annotations/instances_{split}2017.json + DATA_DIR/{split}2017/.

    By default through records (data.coco_records.open_coco): the first use
    converts the split once into TFRecord shards (records_dir, default
    DATA_DIR/records/...), later uses open them in well under a second; returns a
    CocoRecords. in_memory=True reads everything into a CocoSplit instead (the
    reference the records are tested against). Both have categories, coco,
    dropped, summary(), records, mask_size, max_instances, and give the same
    make_dataset elements.

    Drops (counted in .dropped and logged,
    never silent): polygon parts with fewer than 3 points (the annotation too when
    no part is left), boxes of zero width or height, instances beyond max_instances
    in one image, and, with skip_images_without_annotations=True, images with no
    usable instance. iscrowd annotations are not instances: they are kept as
    crowd_boxes. Bad input (data.coco_json) raises CocoInputError, one line naming
    the file and the id, or with skip_bad=True is skipped and counted.
    """
    if not in_memory:
        from data.coco_records import open_coco

        return open_coco(data_dir, split, mask_size=mask_size, max_instances=max_instances, skip_bad=skip_bad,
                         skip_images_without_annotations=skip_images_without_annotations, records_dir=records_dir)
    ann_path, image_dir = split_paths(data_dir, split)
    index = load_instances(ann_path, image_dir, skip_bad=skip_bad)
    for image in index.images:
        # The in-memory route does not decode here (tf.data does); the size is checked from the header.
        _check_image_size(image)
    categories = Categories.from_index(index)
    dropped = empty_drop_counts()
    dropped.update({f"{kind}_skipped": n for kind, n in index.skipped.items()})
    records = []
    for image in index.images:
        record = image_instances(image, index.annotations[image["id"]], categories, mask_size, dropped)
        for key, counter in (("boxes", "instances_over_max_instances"),
                             ("crowd_boxes", "crowd_regions_over_max_instances")):
            dropped[counter] += max(0, len(record[key]) - max_instances)
        record = dict(record, boxes=record["boxes"][:max_instances], class_ids=record["class_ids"][:max_instances],
                      masks=record["masks"][:max_instances], crowd_boxes=record["crowd_boxes"][:max_instances])
        if not len(record["boxes"]) and skip_images_without_annotations:
            dropped["images_without_annotations_skipped"] += 1
            continue
        records.append(record)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco = COCO()
        coco.dataset = index.document
        coco.createIndex()
    result = CocoSplit(coco, categories, records, dropped, mask_size, max_instances)
    if any(dropped.values()):
        log.warning("%s: %s", ann_path, result.summary())
    return result


def split_paths(data_dir, split):
    """(annotation file, image folder) of a split in the official layout; a missing file is one clear line."""
    ann_path = os.path.join(data_dir, "annotations", f"instances_{split}2017.json")
    if not os.path.isfile(ann_path):
        raise CocoFileNotFound(
            f"{ann_path} not found: --data must be a COCO folder with annotations/instances_{split}2017.json "
            f"(write a sample with: python -m data.samples coco DIR)")
    return ann_path, os.path.join(data_dir, f"{split}2017")


def empty_drop_counts():
    """The drop counters of a split, all present (CocoSplit.dropped)."""
    return dict(polygon_parts_with_fewer_than_3_points=0, annotations_with_no_valid_polygon=0,
                zero_area_boxes=0, instances_over_max_instances=0, crowd_regions_over_max_instances=0,
                images_without_annotations_skipped=0)


def _check_image_size(image):
    from PIL import Image

    with Image.open(image["path"]) as f:
        width, height = f.size
    if (height, width) != (image["height"], image["width"]):
        raise CocoInputError(f"{image['path']}: image {image['id']} is {height}x{width}, "
                             f"the annotation file says {image['height']}x{image['width']}")


def image_instances(image, annotations, categories, mask_size, dropped):
    """One image's instances, every one kept (no max_instances cap), in annotation-file order.

    image: a CocoIndex image dict; annotations: its checked annotations.
    Returns dict(image_id, path, height, width, boxes [N, 4] float32 (original
    pixels), class_ids [N] int32 (1..K), masks [N, S, S] uint8, crowd_boxes
    [C, 4] float32). Counts what it drops in `dropped` (see read_coco).
    """
    height, width = image["height"], image["width"]
    boxes, class_ids, masks, crowd_boxes = [], [], [], []
    for ann in annotations:
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            dropped["zero_area_boxes"] += 1
            continue
        box = [y, x, y + h, x + w]
        if ann.get("iscrowd", 0):
            crowd_boxes.append(box)
            continue
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list):
            kept = [p for p in segmentation if len(p) >= 6]
            dropped["polygon_parts_with_fewer_than_3_points"] += len(segmentation) - len(kept)
            if not kept:
                dropped["annotations_with_no_valid_polygon"] += 1
                continue
            segmentation = kept
        boxes.append(box)
        class_ids.append(ann["category_id"])
        masks.append(crop_mask(annotation_mask(segmentation, height, width), box, mask_size))
    return dict(
        image_id=int(image["id"]), path=image["path"], height=height, width=width,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        class_ids=categories.to_contiguous(np.asarray(class_ids, np.int64)).reshape(-1),
        masks=np.asarray(masks, np.uint8).reshape(-1, mask_size, mask_size),
        crowd_boxes=np.asarray(crowd_boxes, np.float32).reshape(-1, 4))


def resized_size(height, width, short_side=800, long_side=1333):
    """Size after scaling so the short side is short_side unless the long side would pass long_side.

    torchvision's rule exactly (GeneralizedRCNNTransform in eager mode): scale =
    min(short_side / short, long_side / long) and size = floor(side * scale), all
    in float64 as Python computes them (a float32 scale gives 799 for 480x640
    where torchvision gives 800; a float32 product 1333 for 100x298 where it gives
    1332). The one resize rule of the project: the COCO pipeline's targets and
    models.mask_rcnn.transform both use it.
    height, width: Python ints or int tensors of any shape (e.g. [B]).
    Returns (new_height, new_width) int32 tensors of that shape.
    """
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    scale = tf.minimum(short_side / tf.minimum(h, w), long_side / tf.maximum(h, w))
    return tf.cast(tf.floor(h * scale), tf.int32), tf.cast(tf.floor(w * scale), tf.int32)


def make_dataset(split, *, batch_size, training, short_side=800, long_side=1333, seed=None, drop_remainder=None,
                 input_context=None):
    """tf.data pipeline of one split: a CocoSplit (in memory) or a data.coco_records.CocoRecords.

    Per step (tensor ops only): decode, random horizontal flip when training
    (the image, boxes and masks), the size the model will resize the image to
    (resized_size with short_side / long_side) and the boxes scaled to it.
    Images stay uint8 at their decoded size, zero-padded to the largest in the
    batch: the model resizes, normalises and pads them
    (models.mask_rcnn.transform.detector_inputs(element) gives the detector's
    input). Instances are padded to split.max_instances with class 0.
    Training shuffles every epoch (seeded) and repeats forever; evaluation
    runs once, in image-id order, and keeps the last partial batch. Whether an
    image is flipped depends only on (seed, epoch, image id), so both kinds of
    split give an image the same element in the same epoch.
    input_context (tf.distribute.InputContext): this pipeline reads only its
    share of the images (records only; see data.coco_records.read_records).

    Elements, with M = split.max_instances and S = split.mask_size:
      image [B, Hd, Wd, 3] uint8: RGB as decoded (flipped when training), image b
        in image[b, :original_size[b, 0], :original_size[b, 1]], zeros beyond
        (Hd, Wd: the batch's largest decoded height and width);
      original_size [B, 2] int32: (height, width) as decoded = as annotated;
      image_size [B, 2] int32: (height, width) the model resizes image b to
        (resized_size(original_size, short_side, long_side)); boxes, crowd boxes
        and the model's outputs are in pixels of this resized image;
      image_id [B] int64;
      boxes [B, M, 4] float32 (y1, x1, y2, x2 in resized-image pixels, zeros for padding);
      class_ids [B, M] int32 (0 = padding); masks [B, M, S, S] uint8 (box crops);
      num_instances [B] int32; crowd_boxes [B, M, 4] float32 (resized pixels).
    """
    drop_remainder = training if drop_remainder is None else drop_remainder
    # Flips are stateless: drawn from (seed, epoch, image id); without a seed, from a random one.
    flip_seed = int(np.random.default_rng(seed).integers(2 ** 31))
    prepare = functools.partial(prepare_example, training=training, short_side=short_side, long_side=long_side,
                                flip_seed=flip_seed)
    if isinstance(split, CocoSplit):
        if input_context is not None:
            raise ValueError("input_context needs the record route (data.coco_records.open_records)")
        dataset = _memory_examples(split, training, seed).map(
            prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        from data.coco_records import read_records

        # prepare runs in the records' parsing map (one parallel stage, not two).
        dataset = read_records(split, training=training, seed=seed, input_context=input_context, prepare=prepare)
    # The batch op pads the instances to max_instances as it copies them in (no per-example padded copy).
    m, s = split.max_instances, split.mask_size
    padded_shapes = dict(image=[None, None, 3], image_id=[], boxes=[m, 4], class_ids=[m], masks=[m, s, s],
                         num_instances=[], crowd_boxes=[m, 4], image_size=[2], original_size=[2])
    dataset = dataset.padded_batch(batch_size, padded_shapes=padded_shapes, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _memory_examples(split, training, seed):
    """Examples (see prepare_example) of an in-memory CocoSplit, from a generator over its records."""
    records = split.records
    size, max_instances = split.mask_size, split.max_instances
    if not records:
        raise ValueError("the COCO split has no images to read (were all skipped as empty?)")
    order_rng = np.random.default_rng(seed)
    epochs = itertools.count()

    def generate():
        # Called once per pass over the data: a new order each epoch when training.
        epoch = next(epochs)
        order = order_rng.permutation(len(records)) if training else range(len(records))
        for i in order:
            r = records[i]
            yield dict(image_bytes=_read_bytes(r["path"]), image_id=r["image_id"], epoch=epoch,
                       original_size=[r["height"], r["width"]], boxes=r["boxes"], class_ids=r["class_ids"],
                       masks=r["masks"], crowd_boxes=r["crowd_boxes"])

    signature = dict(
        image_bytes=tf.TensorSpec([], tf.string), image_id=tf.TensorSpec([], tf.int64),
        epoch=tf.TensorSpec([], tf.int64), original_size=tf.TensorSpec([2], tf.int32),
        boxes=tf.TensorSpec([None, 4], tf.float32), class_ids=tf.TensorSpec([None], tf.int32),
        masks=tf.TensorSpec([None, size, size], tf.uint8), crowd_boxes=tf.TensorSpec([None, 4], tf.float32))
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    if training:
        return dataset.repeat()
    # A known length lets Keras stop before asking an exhausted iterator for
    # one more batch (that extra step would count in the metrics' means).
    return dataset.apply(tf.data.experimental.assert_cardinality(len(records)))


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def prepare_example(example, *, training, short_side, long_side, flip_seed):
    """One example -> one unbatched, unpadded element of make_dataset (its batch op pads the instances).

    example: image_bytes [] string (the encoded file), image_id [] int64, epoch
    [] int64, original_size [2] int32, boxes [N, 4] float32 (original pixels),
    class_ids [N] int32, masks [N, S, S] uint8, crowd_boxes [C, 4] float32,
    with N, C <= max_instances.
    """
    image = tf.io.decode_image(example["image_bytes"], channels=3, expand_animations=False)
    # The model crops each image to original_size, so the file must hold that size: both readers check it
    # before this runs (coco_convert when it converts, read_coco(in_memory=True) from the file's header).
    original = example["original_size"]
    new_h, new_w = resized_size(original[0], original[1], short_side, long_side)
    box_scale = tf.stack([new_h, new_w, new_h, new_w]) / tf.tile(original, [2])
    boxes = example["boxes"] * tf.cast(box_scale, tf.float32)
    crowd_boxes = example["crowd_boxes"] * tf.cast(box_scale, tf.float32)
    masks = example["masks"]
    if training:
        # Image ids stay below 2**31 in COCO; the epoch takes the high bits.
        key = tf.stack([tf.constant(flip_seed, tf.int64), example["epoch"] * 2 ** 31 + example["image_id"]])
        flip = tf.random.stateless_uniform([], seed=key) < 0.5
        width = tf.cast(new_w, tf.float32)
        # tf.reverse, not a ::-1 slice (a strided-slice kernel: 14 ms on an 800x1066 float image here).
        image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
        boxes = tf.cond(flip, lambda: _flip_boxes(boxes, width), lambda: boxes)
        crowd_boxes = tf.cond(flip, lambda: _flip_boxes(crowd_boxes, width), lambda: crowd_boxes)
        masks = tf.cond(flip, lambda: tf.reverse(masks, [2]), lambda: masks)
    return dict(image=image, image_id=example["image_id"], boxes=boxes, class_ids=example["class_ids"], masks=masks,
                num_instances=tf.shape(boxes)[0], crowd_boxes=crowd_boxes, image_size=tf.stack([new_h, new_w]),
                original_size=original)


def _flip_boxes(boxes, width):
    """Mirror [N, 4] (y1, x1, y2, x2) boxes in an image `width` pixels wide."""
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    return tf.stack([y1, width - x2, y2, width - x1], axis=-1)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["prepare"]:
        sys.exit("usage: python -m data.coco prepare DATA_DIR [--split train val] [--out DIR] [--skip-bad] "
                 "(python -m data.coco prepare --help for more)")
    from data.coco_convert import main

    sys.exit(main(sys.argv[2:]))

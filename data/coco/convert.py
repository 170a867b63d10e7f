"""One-time conversion of a COCO-format dataset into TFRecord shards (schema: data.coco.records).

    python -m data.coco prepare DATA_DIR [--split train val] [--out DIR] [--skip-bad] [--workers N]
    python -m data.coco prepare --annotations FILE.json --images DIR --out DIR   (any COCO-format dataset)

The annotation file is read and checked once, in this process (data.coco.annotations);
its images are cut into shards of `images_per_shard` consecutive image ids and
each shard is written by a worker process (one per core; `spawn`, so a parent
that has TensorFlow running is never forked). A worker checks each image (it
decodes and has the JSON's size), rasterises the masks (data.coco.image_instances)
and writes SHARD.tfrecord + SHARD.json (its counts) under temporary names, renamed
when complete. So a killed conversion continues where it stopped: finished shards
are kept, partial ones written again. manifest.json, written last, marks the
records complete; plan.json (written first) makes sure a resumed run converts the
same file with the same settings.
"""
import dataclasses
import fcntl
import glob
import json
import multiprocessing
import os
import sys
import time

from data.coco.annotations import CocoInputError, load_instances
from data.errors import UserError
from data.progress import as_progress

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PLAN = "plan.json"
CATEGORIES = "categories.json"
LOCK = "lock"
_PARTIAL = ".partial"


class RecordsMismatch(UserError, ValueError):
    """A records folder that holds another conversion (other source file or settings)."""


@dataclasses.dataclass(frozen=True)
class _ShardTask:
    out_dir: str
    name: str  # e.g. shard-00003-of-00116
    images: list  # CocoIndex image dicts (with "path")
    annotations: list  # per image, its annotation dicts
    categories: list  # [(coco id, name)]
    mask_size: int
    skip_bad: bool


def shard_name(index, count):
    return f"shard-{index:05d}-of-{count:05d}"


def source_fingerprint(ann_path, sha1):
    stat = os.stat(ann_path)
    return dict(path=os.path.abspath(ann_path), size=stat.st_size, mtime_ns=stat.st_mtime_ns, sha1=sha1)


def convert(ann_path, image_dir, out_dir, *, mask_size=56, images_per_shard=1024, num_workers=None, skip_bad=False,
            log=None, progress=None):
    """Converts one COCO-format annotation file + image folder into out_dir; returns the manifest dict.

    Resumes a conversion of the same file and settings that was stopped; refuses
    (RecordsMismatch) a folder that holds another; returns at once where the
    records are finished (after waiting for another process converting them).
    Bad input raises CocoInputError (one line naming the file and id) or, with
    skip_bad, is skipped and counted.
    log: a function taking one line of news (default: print to stderr).
    progress: a data.progress.Progress for the images converted (None: shown on stderr);
    it counts as each shard is finished.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, LOCK), "a") as lock:
        # Several processes may open the same split at once (multi-worker training on one machine, a
        # shared disk): the first converts, the others wait here and then find the manifest.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(out_dir, MANIFEST)):
            log(f"{out_dir} holds finished records already")
            return _read_json(os.path.join(out_dir, MANIFEST))
        return _convert(ann_path, image_dir, out_dir, mask_size, images_per_shard, num_workers, skip_bad, log,
                        as_progress(progress))


def _convert(ann_path, image_dir, out_dir, mask_size, images_per_shard, num_workers, skip_bad, log, progress):
    started = time.perf_counter()
    index = load_instances(ann_path, image_dir, skip_bad=skip_bad)
    if not index.images:
        raise CocoInputError(f"{ann_path}: lists no usable image")
    num_shards = -(-len(index.images) // images_per_shard)
    plan = dict(format_version=FORMAT_VERSION, source_sha1=index.sha1, image_dir=os.path.abspath(image_dir),
                mask_size=mask_size, images_per_shard=images_per_shard, num_shards=num_shards)
    _claim(out_dir, plan)
    for stale in glob.glob(os.path.join(out_dir, f"shard-*{_PARTIAL}")):
        os.remove(stale)  # a killed worker's unfinished file: ours, written again below
    _write_json(os.path.join(out_dir, CATEGORIES), [{"id": i, "name": n} for i, n in index.categories])

    tasks = []
    for s in range(num_shards):
        images = index.images[s * images_per_shard:(s + 1) * images_per_shard]
        name = shard_name(s, num_shards)
        if not _shard_done(out_dir, name):
            tasks.append(_ShardTask(out_dir, name, images, [index.annotations[i["id"]] for i in images],
                                    index.categories, mask_size, skip_bad))
    done = num_shards - len(tasks)
    workers = min(num_workers or len(os.sched_getaffinity(0)), len(tasks)) or 1
    log(f"converting {ann_path}: {len(index.images)} images in {num_shards} shards to {out_dir}"
        + (f" ({done} already done)" if done else "") + f", {workers} process(es)")
    done_images = len(index.images) - sum(len(task.images) for task in tasks)
    with progress.bar(len(index.images), "converting", initial=done_images) as bar:
        for stats in _run(tasks, workers):
            bar.update(stats["num_images"] + stats["dropped"]["bad_images_skipped"])  # every image of the shard
    shards = [_read_json(os.path.join(out_dir, shard_name(s, num_shards) + ".json")) for s in range(num_shards)]
    manifest = dict(plan, source=source_fingerprint(ann_path, index.sha1), categories=CATEGORIES, shards=shards,
                    skipped_in_json=dict(index.skipped), num_images=sum(s["num_images"] for s in shards),
                    num_instances=sum(s["num_instances"] for s in shards),
                    seconds=round(time.perf_counter() - started, 1))
    _write_json(os.path.join(out_dir, MANIFEST), manifest)
    log(f"wrote {manifest['num_images']} images, {manifest['num_instances']} instances to {out_dir} "
        f"in {manifest['seconds']} s")
    return manifest


def _claim(out_dir, plan):
    """Writes plan.json, or checks that the one there is this conversion's."""
    path = os.path.join(out_dir, PLAN)
    if os.path.exists(path):
        existing = _read_json(path)
        if existing != plan:
            differ = sorted(k for k in plan if existing.get(k) != plan[k])
            raise RecordsMismatch(f"{out_dir} holds records of another conversion (differs in {', '.join(differ)}): "
                                  f"delete it to convert again, or choose another output folder")
        return
    if set(os.listdir(out_dir)) - {LOCK}:
        raise RecordsMismatch(f"{out_dir} is not empty and holds no COCO records: choose an empty output folder")
    _write_json(path, plan)


def _shard_done(out_dir, name):
    return all(os.path.exists(os.path.join(out_dir, name + ext)) for ext in (".tfrecord", ".json"))


def _run(tasks, workers):
    """Yields each task's stats as it finishes; worker processes when there is more than one."""
    if workers <= 1:
        for task in tasks:
            yield write_shard(task)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(write_shard, tasks)


def write_shard(task):
    """Writes one shard (see the module doc); returns its stats dict (also written as SHARD.json)."""
    import tensorflow as tf

    from data.coco.annotations import check_image_file
    from data.coco.instances import Categories, empty_drop_counts, image_instances, serialize_example

    categories = Categories(tuple(i for i, _ in task.categories), tuple(n for _, n in task.categories))
    dropped = empty_drop_counts()
    dropped["bad_images_skipped"] = 0
    instance_counts, crowd_counts = [], []
    record_path = os.path.join(task.out_dir, task.name + ".tfrecord")
    with tf.io.TFRecordWriter(record_path + _PARTIAL) as writer:
        for image, annotations in zip(task.images, task.annotations):
            try:
                data = check_image_file(image["path"], image["id"], image["height"], image["width"])
            except CocoInputError as error:
                if not task.skip_bad:
                    raise
                print(f"skipped: {error}", file=sys.stderr, flush=True)
                dropped["bad_images_skipped"] += 1
                continue
            record = image_instances(image, annotations, categories, task.mask_size, dropped)
            writer.write(serialize_example(data, image["file_name"], record))
            instance_counts.append(len(record["class_ids"]))
            crowd_counts.append(len(record["crowd_boxes"]))
    stats = dict(file=task.name + ".tfrecord", num_images=len(instance_counts), num_instances=sum(instance_counts),
                 instance_counts=instance_counts, crowd_counts=crowd_counts, dropped=dropped)
    _write_json(os.path.join(task.out_dir, task.name + ".json"), stats)
    os.replace(record_path + _PARTIAL, record_path)  # last: a shard with its .tfrecord is complete
    return stats


def _write_json(path, value):
    with open(path + _PARTIAL, "w") as f:
        json.dump(value, f)
    os.replace(path + _PARTIAL, path)


def _read_json(path):
    with open(path) as f:
        return json.load(f)



"""COCO input at scale: conversion throughput, time to the first batch, reader memory.

COCO-sized annotation files (data.samples.coco.write_coco_annotations_at_scale:
10k and 118k images, ~7.3 instances each, as train2017's 118k / 860k; tiny 64x80 images) are
converted once (data.coco.convert, one worker per core), then a fresh process opens the split as
train.py does (data.coco.read_coco) and times the first batch (TensorFlow's import left out) and
reads on to its peak memory (VmHWM). At 10k the in-memory route (read_coco(in_memory=True)) is
measured the same way for comparison.

The pipeline's cost against JPEG decoding: benchmarks.coco_pipeline (--only coco_pipeline).
"""
import json
import os
import subprocess
import sys
import tempfile
import time


from benchmarks.harness import Result

_PROBE = r"""
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf
from data import coco
from benchmarks.harness import peak_rss_mib
data_dir, in_memory, batches, short_side = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
start = time.perf_counter()
split = coco.read_coco(data_dir, "train", in_memory=in_memory)
dataset = coco.make_dataset(split, batch_size=2, training=True, seed=0, short_side=short_side,
                            long_side=short_side * 1333 // 800)
iterator = iter(dataset)
next(iterator)
first = time.perf_counter() - start
for _ in range(batches):
    next(iterator)
print(json.dumps({"first_batch_s": first, "peak_rss_mib": peak_rss_mib()}))
"""


def _probe(data_dir, *, in_memory, batches, short_side):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", _PROBE, data_dir, "1" if in_memory else "0", str(batches),
                           str(short_side)], cwd=root, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _annotation_side(root, quick):
    from data import coco
    from data.coco.convert import convert
    from data.samples.coco import write_coco_annotations_at_scale

    results = []
    sizes = (200,) if quick else (10_000, 118_000)
    batches, short_side = (3, 64) if quick else (200, 800)
    for num_images in sizes:
        data_dir = os.path.join(root, f"coco_{num_images}")
        num_instances = write_coco_annotations_at_scale(data_dir, num_images=num_images)
        start = time.perf_counter()
        manifest = convert(*coco.split_paths(data_dir, "train"), os.path.join(data_dir, "records", "train2017_mask56"),
                num_workers=os.cpu_count(), log=lambda line: None)
        seconds = time.perf_counter() - start
        size = f"{num_images} img, {num_instances} inst"
        workers = min(os.cpu_count(), len(manifest["shards"]))
        results.append(Result("coco records: conversion", size, seconds,
                              throughput=f"{num_instances / seconds:.0f} inst/s",
                              note=f"{workers} process(es), {len(manifest['shards'])} shards; JSON check, image "
                                   f"check, masks, writing"))
        probe = _probe(data_dir, in_memory=False, batches=batches, short_side=short_side)
        results.append(Result("coco records: first batch, second run", size, probe["first_batch_s"],
                              ratio=probe["first_batch_s"], target="<= 10",
                              note="read_coco -> make_dataset -> first batch, fresh process, TF import excluded"))
        results.append(Result("coco records: reader peak RSS", size, probe["first_batch_s"],
                              throughput=f"{probe['peak_rss_mib']:.0f} MiB",
                              note=f"whole process after {batches} batches of 2 at short side {short_side}"))
        if num_images == sizes[0] and not quick:  # the reference route costs a process; --quick stays short
            memory = _probe(data_dir, in_memory=True, batches=batches, short_side=short_side)
            results.append(Result("coco in memory: first batch", size, memory["first_batch_s"],
                                  throughput=f"{memory['peak_rss_mib']:.0f} MiB",
                                  note="read_coco(in_memory=True): JSON + every mask rasterised up front"))
    return results


def run(quick=False):
    with tempfile.TemporaryDirectory(prefix="bench_coco_") as root:
        return _annotation_side(root, quick)

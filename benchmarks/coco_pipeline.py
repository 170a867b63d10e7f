"""The COCO train pipeline's cost against reading + JPEG decoding alone, and the input transform it hands the model.

The train pipeline (data.coco.make_dataset: flip, resize geometry for 800x1333, batch 2) over records of
480x640 JPEG scenes (COCO's typical size) against reading + parsing + JPEG decoding alone, timed
alternately as benchmarks.pipeline.benchmark_pipeline does; the figure is CPU time per image, full / decode.
The pipeline hands the model uint8 images at their decoded size; the resize to 800x1066, the
normalisation and the padding to /32 run in the model's step (models.mask_rcnn.transform.detector_inputs):
timed here too, on the same batches in a tf.function, as the cost that moved out of tf.data.
"""
import json
import os
import tempfile

from benchmarks.harness import Result, median_pass_seconds


def run(quick=False):
    import tensorflow as tf

    from data import coco
    from data.coco.convert import convert
    from data.coco.records import open_records, read_records
    from data.samples.coco import write_coco_sample
    from models.mask_rcnn.transform import detector_inputs

    # A pass is 4 epochs of the 256 listed images, each pass a fresh iterator: a pass of 240 images also
    # charged the iterator's start (function instantiation, buffers filled) and the batches still in its
    # buffers at the end, both once per training run, to 240 images (1.36-1.37 against 1.28-1.31 here).
    size, num_images, num_elements, repeats = ((64, 80), 4, 8, 2) if quick else ((480, 640), 8, 1024, 3)
    sides = dict(short_side=64, long_side=106) if quick else dict(short_side=800, long_side=1333)
    with tempfile.TemporaryDirectory(prefix="bench_coco_pipeline_") as root:
        data_dir = os.path.join(root, "pipeline")
        write_coco_sample(data_dir, num_train=num_images, num_val=1, size=size, seed=0)
        # An epoch of 32 x 8 entries: with 8, the reader's per-epoch set-up (shuffled shard names, a new
        # interleave) was charged to 8 images (0.4 CPU ms per image here), a cost COCO spreads over 118k.
        _list_each_image(coco.split_paths(data_dir, "train")[0], copies=1 if quick else 32)
        records_dir = os.path.join(data_dir, "records")
        convert(*coco.split_paths(data_dir, "train"), records_dir, num_workers=1, log=lambda line: None)
        split = open_records(records_dir)
        decode = read_records(split, training=False).repeat().map(
            lambda e: tf.io.decode_image(e["image_bytes"], channels=3, expand_animations=False),
            num_parallel_calls=tf.data.AUTOTUNE).take(num_elements).prefetch(tf.data.AUTOTUNE)
        full = coco.make_dataset(split, batch_size=2, training=True, seed=0, **sides).take(num_elements // 2)
        (decode_s, decode_cpu), (full_s, full_cpu) = median_pass_seconds([decode, full], repeats=repeats)
        batches = list(full.take(120))  # the in-model transform is timed on 240 images
    transform = tf.function(detector_inputs, reduce_retracing=True)
    in_model = [(lambda b=b: transform(b)["images"].numpy()) for b in batches]  # one call per batch, blocking
    ((transform_s, transform_cpu),) = median_pass_seconds([_Calls(in_model)], repeats=repeats)
    transformed = 2 * len(batches)
    image = f"{num_elements} img {size[0]}x{size[1]}"
    resized = "x".join(str(int(v)) for v in batches[0]["image_size"][0])
    return [
        Result("coco pipeline decode only", image, decode_s / num_elements,
               throughput=f"{num_elements / decode_s:.1f} img/s",
               note=f"records read + parse + JPEG decode; {1000 * decode_cpu / num_elements:.1f} CPU ms/img"),
        Result("coco pipeline full train", f"{image} -> {resized}", full_s / num_elements,
               throughput=f"{num_elements / full_s:.1f} img/s",
               note=f"decode + flip + target geometry + batch 2 (uint8 images at decoded size); "
                    f"{1000 * full_cpu / num_elements:.1f} CPU ms/img"),
        Result("coco pipeline full / decode-only time", image, full_s / num_elements, ratio=full_cpu / decode_cpu,
               target="<= 1.3", note=f"CPU time per image; wall-clock ratio {full_s / decode_s:.2f}"),
        Result("coco input transform in the model", f"2x{size[0]}x{size[1]} -> {resized}",
               transform_s / transformed, throughput=f"{transformed / transform_s:.1f} img/s",
               note=f"detector_inputs in a tf.function (resize, normalise, pad /32) on the pipeline's batches, "
                    f"part of the training step; {1000 * transform_cpu / transformed:.1f} CPU ms/img here"),
    ]


def _list_each_image(annotation_path, copies):
    """Rewrites a COCO JSON so each image (with its annotations) is listed `copies` times under new ids."""
    with open(annotation_path) as f:
        document = json.load(f)
    step_images = 1 + max(image["id"] for image in document["images"])
    step_annotations = 1 + max(annotation["id"] for annotation in document["annotations"])
    document["images"] = [dict(image, id=image["id"] + copy * step_images)
                          for copy in range(copies) for image in document["images"]]
    document["annotations"] = [dict(annotation, id=annotation["id"] + copy * step_annotations,
                                    image_id=annotation["image_id"] + copy * step_images)
                               for copy in range(copies) for annotation in document["annotations"]]
    with open(annotation_path, "w") as f:
        json.dump(document, f)


class _Calls:
    """An iterable that runs each of `calls` once per pass (for harness.median_pass_seconds)."""

    def __init__(self, calls):
        self.calls = calls

    def __iter__(self):
        return (call() for call in self.calls)

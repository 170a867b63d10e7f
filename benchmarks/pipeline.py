"""Input pipeline: reading + PNG decoding alone vs the whole PSPNet training pipeline on Cityscapes-size images.

The images are a synthetic sample in the official layout (data.samples.cityscapes),
written to a temporary folder; the figures come from benchmark_pipeline, which times
the two pipelines alternately over the same files.
"""
import tempfile

import tensorflow as tf

from benchmarks.harness import Result, median_pass_seconds
from data.cityscapes import find_examples, read_folder, train_pipeline
from data.samples.cityscapes import write_cityscapes_sample


def run(quick=False):
    size = (128, 256) if quick else (1024, 2048)
    crop = (64, 64) if quick else (713, 713)
    num_images = 4 if quick else 8
    num_elements = 8 if quick else 200
    repeats = 2 if quick else 3
    with tempfile.TemporaryDirectory(prefix="bench_cityscapes_") as root:
        # The files cycle (repeat()): with 8 images the OS file cache holds them all, so
        # reading costs little next to PNG decoding, which runs for every element.
        write_cityscapes_sample(root, num_train=num_images, num_val=1, size=size, seed=0)
        stats = benchmark_pipeline(root, crop_size=crop, num_elements=num_elements, batch_size=2, repeats=repeats)
    n = stats["num_elements"]
    image = "x".join(map(str, stats["image_size"]))
    crop_text = "x".join(map(str, stats["crop_size"]))
    decode_s = n / stats["decode_images_per_s"]
    train_s = n / stats["train_images_per_s"]
    return [
        Result("pipeline decode only", f"{n} img {image}", decode_s / n,
               throughput=f"{stats['decode_images_per_s']:.1f} img/s",
               note=f"read + PNG decode image and label; {stats['decode_cpu_ms_per_image']:.0f} CPU ms/img"),
        Result("pipeline full train", f"{n} img -> {crop_text}", train_s / n,
               throughput=f"{stats['train_images_per_s']:.1f} img/s",
               note=f"decode + scale/rotate/blur/flip/crop/normalize + batch 2; "
                    f"{stats['train_cpu_ms_per_image']:.0f} CPU ms/img"),
        Result("pipeline full / decode-only time", f"{n} img {image}", train_s / n, ratio=stats["cpu_ratio"],
               target="<= 1.3",
               note=f"ratio of CPU time per image (steadier on a shared machine); "
                    f"wall-clock ratio {stats['ratio']:.2f}"),
    ]


def benchmark_pipeline(root, *, crop_size=(713, 713), num_elements=200, batch_size=2, repeats=3):
    """Images per second: reading + PNG decoding alone vs the whole train pipeline.

    Both read the train split of `root` (official layout, e.g. a sample written
    by `python -m data.samples cityscapes ROOT --size 1024x2048`) in a loop with
    the same parallel decoding (read_folder); the train pipeline adds the
    default recipe (scale, rotation, blur, flip, crop, normalization) and
    batching. After one untimed pass each (compiling, AUTOTUNE, file cache),
    the two are timed alternately `repeats` times over `num_elements` images,
    so a load that drifts on a shared machine hits both; figures are medians.

    Returns {"decode_images_per_s", "train_images_per_s", "ratio" (train time
    per image / decode time per image; 1 means augmentation is free),
    "decode_cpu_ms_per_image", "train_cpu_ms_per_image", "cpu_ratio" (the
    same from CPU time), "num_elements", "crop_size", "image_size" [H, W] of
    the first image}.
    """
    num_batches = max(num_elements // batch_size, 1)
    num_elements = num_batches * batch_size
    decode_only = read_folder(root, "train").repeat().take(num_elements).prefetch(tf.data.AUTOTUNE)
    full = train_pipeline(read_folder(root, "train").repeat(), batch_size=batch_size, crop_size=crop_size,
                          seed=0).take(num_batches)

    (decode_s, decode_cpu), (full_s, full_cpu) = median_pass_seconds([decode_only, full], repeats=repeats)
    with tf.io.gfile.GFile(find_examples(root, "train")[0].image_path, "rb") as f:
        header = f.read(24)  # PNG IHDR: width and height, big-endian uint32, at bytes 16..23
    return {
        "decode_images_per_s": num_elements / decode_s,
        "train_images_per_s": num_elements / full_s,
        "ratio": full_s / decode_s,
        "decode_cpu_ms_per_image": 1000 * decode_cpu / num_elements,
        "train_cpu_ms_per_image": 1000 * full_cpu / num_elements,
        "cpu_ratio": full_cpu / decode_cpu,
        "num_elements": num_elements,
        "crop_size": [int(v) for v in crop_size],
        "image_size": [int.from_bytes(header[20:24], "big"), int.from_bytes(header[16:20], "big")],
    }

"""Input pipeline: reading + PNG decoding alone vs the whole PSPNet training pipeline on Cityscapes-size images.

The images are a synthetic sample in the official layout (data.synthetic_cityscapes),
written to a temporary folder; the figures come from data.cityscapes.benchmark_pipeline,
which times the two pipelines alternately over the same files.
"""
import tempfile

from benchmarks.harness import Result
from data.cityscapes import benchmark_pipeline
from data.synthetic_cityscapes import write_cityscapes_sample


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

"""Peak memory (RSS) of a PSPNet training step, of Mask R-CNN detector inference and of a detector training
step at batch 2 (ours and torchvision's), each in a fresh process.

Each figure comes from its own subprocess that does the one job and reports
its peak (VmHWM, see benchmarks.harness.peak_rss_mib). The subprocesses use
the threads of `python -m benchmarks --threads` (BENCHMARK_THREADS). The
torchvision probe imports no TensorFlow and ours no torch: each figure is
one framework's runtime + its model + one image.
"""
import json
import os
import subprocess
import sys

from benchmarks.harness import Result

_PROBE = r"""
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
job, quick, threads = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
start = time.perf_counter()
if job == "detector_torchvision":
    import torch
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    from benchmarks import torchvision_detector as tv
    from benchmarks.detector import photo
    tv.detect(tv.load(sys.argv[4]), photo(quick))
elif job == "detector_train_torchvision":
    import torch
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    from benchmarks.detector import training_step_torchvision
    step = training_step_torchvision(sys.argv[4])
    step()
    step()
else:
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    if job == "pspnet_train":
        from benchmarks.pspnet import _compiled_training_model
        backbone, width, crop = ("resnet18", 8, 64) if quick else ("resnet50", 64, 473)
        model = _compiled_training_model(backbone, width, False)
        x = np.random.default_rng(0).normal(size=(2, crop, crop, 3)).astype(np.float32)
        y = np.zeros((2, crop, crop), np.int32)
        model.train_on_batch(x, {"main": y, "aux": y})
        model.train_on_batch(x, {"main": y, "aux": y})
    elif job == "detector_ours":
        from benchmarks.detector import load_ours, photo
        from models.mask_rcnn.transform import detect
        detect(load_ours(sys.argv[4]), [photo(quick)])[0]["masks"].rle()
    elif job == "detector_train_ours":
        from benchmarks.detector import training_step_ours
        step = training_step_ours(sys.argv[4])
        step()
        step()
from benchmarks.harness import peak_rss_mib
print(json.dumps({"peak_rss_mib": peak_rss_mib(), "seconds": time.perf_counter() - start}))
"""


def _probe(job, quick, *paths):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    threads = os.environ.get("BENCHMARK_THREADS", str(os.cpu_count()))
    done = subprocess.run([sys.executable, "-c", _PROBE, job, "1" if quick else "0", threads, *paths], cwd=root,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick=False):
    from benchmarks.detector import converted_models

    results = []
    train = _probe("pspnet_train", quick)
    results.append(Result("peak RSS: pspnet train step", "2x64 r18/w8" if quick else "2x473 resnet50",
                          train["seconds"], throughput=f"{train['peak_rss_mib']:.0f} MiB",
                          note="whole process: TF runtime + model + 2 steps"))
    torch_path, keras_path = converted_models(quick)
    size = "1x128x160 r50/w16" if quick else "1x800x1333 resnet50"
    ours = _probe("detector_ours", quick, keras_path)
    results.append(Result("peak RSS: detector detect() [ours]", size, ours["seconds"],
                          throughput=f"{ours['peak_rss_mib']:.0f} MiB",
                          note="whole process: TF runtime + .keras load + one photo, masks pasted to RLE"))
    if torch_path is None:  # --quick: no torchvision model at that size
        return results
    results += _side_by_side("detector", size, ours, _probe("detector_torchvision", quick, torch_path),
                             "whole process: torch runtime + state-dict load + one photo, masks pasted",
                             "load + one call")
    train_size = "2x800x1333 resnet50"
    ours = _probe("detector_train_ours", quick, keras_path)
    results.append(Result("peak RSS: detector train step [ours]", train_size, ours["seconds"],
                          throughput=f"{ours['peak_rss_mib']:.0f} MiB",
                          note="whole process: TF runtime + .keras load + 2 DetectorTrainer steps (stage 'all')"))
    return results + _side_by_side("detector train step", train_size, ours,
                                   _probe("detector_train_torchvision", quick, torch_path),
                                   "whole process: torch runtime + state-dict load + 2 SGD steps in train()",
                                   "load + trace + 2 steps")


def _side_by_side(job, size, ours, reference, reference_note, ours_seconds):
    """torchvision's peak RSS row and the ours / torchvision row of `job` (probe results: dicts)."""
    return [
        Result(f"peak RSS: {job} [torchvision]", size, reference["seconds"],
               throughput=f"{reference['peak_rss_mib']:.0f} MiB", note=reference_note),
        Result(f"peak RSS: {job} ours / torchvision", size, ours["seconds"],
               ratio=ours["peak_rss_mib"] / reference["peak_rss_mib"], target="<= 1.0",
               note=f"peak RSS ratio (the seconds are ours: {ours_seconds})"),
    ]

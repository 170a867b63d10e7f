"""Peak memory (RSS) of a PSPNet training step and of Mask R-CNN inference, each in a fresh process.

Each figure comes from its own subprocess that does the one job and reports
its peak (VmHWM, see benchmarks.harness.peak_rss_mib).
"""
import json
import os
import subprocess
import sys

from benchmarks.harness import Result

_PROBE = r"""
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
job, quick = sys.argv[1], sys.argv[2] == "1"
start = time.perf_counter()
if job == "pspnet_train":
    from benchmarks.pspnet import _compiled_training_model
    backbone, width, crop = ("resnet18", 8, 64) if quick else ("resnet50", 64, 473)
    model = _compiled_training_model(backbone, width, False)
    x = np.random.default_rng(0).normal(size=(2, crop, crop, 3)).astype(np.float32)
    y = np.zeros((2, crop, crop), np.int32)
    model.train_on_batch(x, {"main": y, "aux": y})
    model.train_on_batch(x, {"main": y, "aux": y})
elif job == "mask_rcnn_inference":
    from benchmarks.mask_rcnn import inference_probe
    inference_probe(quick)
from benchmarks.harness import peak_rss_mib
print(json.dumps({"peak_rss_mib": peak_rss_mib(), "seconds": time.perf_counter() - start}))
"""


def _probe(job, quick):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", _PROBE, job, "1" if quick else "0"], cwd=root,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick=False):
    results = []
    train = _probe("pspnet_train", quick)
    results.append(Result("peak RSS: pspnet train step", "2x64 r18/w8" if quick else "2x473 resnet50",
                          train["seconds"], throughput=f"{train['peak_rss_mib']:.0f} MiB",
                          note="whole process: TF runtime + model + 2 steps"))
    infer = _probe("mask_rcnn_inference", quick)
    results.append(Result("peak RSS: mask r-cnn inference", "quick" if quick else "1x800x1333",
                          infer["seconds"], throughput=f"{infer['peak_rss_mib']:.0f} MiB",
                          note="whole process: TF runtime + model + one image"))
    return results

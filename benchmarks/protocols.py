"""The sources' test protocols (models/pspnet/protocols.py) next to this project's default, on one
Cityscapes-size image: what reproducing a published mIoU costs per image on this machine.

PSPNet-50 with random weights (timing does not depend on them), 19 classes, one 1024x2048 image:
- ours: evaluate.py's default (whole image), and its sliding 713 + flip (the closest to semseg's);
- semseg: tool/test.py at base size 2048, 713 windows (flip always on), single scale and 0.5 ... 1.75;
- mmseg: the 512x1024 models' whole-image test at 2048x1024, and the 769x769 models' slide test
  (769 windows, stride 513, at 2049x1025), each single scale and multi-scale + flip (ratios 0.5 ... 1.75).
One timed run each (the multi-scale ones take minutes), after one untimed warm-up run at single scale.
"""
import time

import numpy as np

from benchmarks.harness import Result
from models import build_pspnet
from models.pspnet import inference_model
from models.pspnet.inference import predict_logits
from models.pspnet.protocols import MMSEG_CITYSCAPES, MMSEG_TTA_RATIOS, mmseg_predict, semseg_predict

NUM_CLASSES = 19


def _seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(quick=False):
    backbone, base_width = ("resnet50", 4) if quick else ("resnet50", 64)  # the layouts need bottlenecks
    height, width = (128, 256) if quick else (1024, 2048)
    crop, base_size, mm_crop, mm_stride = (64, 256, 65, 43) if quick else (713, 2048, 769, 513)
    whole_scale = (width, height)
    slide_scale = (width + 1, height + 1)  # mmsegmentation's 769x769 configs test at 2049x1025
    scales = (1.0, 1.5) if quick else MMSEG_TTA_RATIOS
    image = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    size = f"1x{height}x{width}"
    name = f"pspnet[{backbone}{'' if base_width == 64 else f'/w{base_width}'}]"
    assert MMSEG_CITYSCAPES["mmseg"]["test_scale"] == (2048, 1024)  # the figures below use the configs' scales

    def model(layout):
        return inference_model(build_pspnet(NUM_CLASSES, backbone=backbone, base_width=base_width, layout=layout,
                                            stem="deep"))

    semseg_model, mmseg_model, mmseg_769 = model("semseg"), model("mmseg"), model("mmseg_769x769")
    normalised = None

    def ours(mode, flip):
        nonlocal normalised
        if normalised is None:
            from data.normalization import normalize

            normalised = normalize(image[None])
        return lambda: predict_logits(semseg_model, normalised, mode=mode, crop_size=crop, flip=flip).numpy()

    cases = [
        ("ours whole (evaluate.py default)", ours("whole", False)),
        (f"ours sliding {crop} + flip", ours("sliding", True)),
        ("semseg single scale (flip)", lambda: semseg_predict(semseg_model, image, crop=crop, base_size=base_size)),
        ("semseg multi-scale (flip)",
         lambda: semseg_predict(semseg_model, image, crop=crop, base_size=base_size, scales=scales)),
        ("mmseg whole single scale", lambda: mmseg_predict(mmseg_model, image, test_scale=whole_scale)),
        ("mmseg whole multi-scale + flip",
         lambda: mmseg_predict(mmseg_model, image, test_scale=whole_scale, ratios=scales, flip=True)),
        (f"mmseg slide {mm_crop} single scale",
         lambda: mmseg_predict(mmseg_769, image, mode="slide", test_scale=slide_scale, crop=(mm_crop, mm_crop),
                               stride=(mm_stride, mm_stride))),
        (f"mmseg slide {mm_crop} multi-scale + flip",
         lambda: mmseg_predict(mmseg_769, image, mode="slide", test_scale=slide_scale, crop=(mm_crop, mm_crop),
                               stride=(mm_stride, mm_stride), ratios=scales, flip=True)),
    ]
    results, default = [], None
    for label, fn in cases:
        if "multi-scale" not in label:
            fn()  # warm-up: traces the model at this protocol's window / image sizes
        seconds = _seconds(fn)
        default = default or seconds
        results.append(Result(f"{name} {label}", size, seconds, throughput=f"{1 / seconds:.3f} img/s",
                              ratio=seconds / default, note="ratio: time / ours whole"))
    return results

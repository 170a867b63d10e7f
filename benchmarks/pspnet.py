"""PSPNet training step and inference: images/s and achieved GFLOP/s relative to a large matmul.

The target ratio uses the nominal FLOP count (every layer as the convolution it
is equivalent to, the issue's 323 / 728 GFLOP); the note also gives the rate on
the FLOPs actually executed, which are fewer because the head's PyramidConv2D
factorises the pyramid branches (see models/layers.py).
"""
import numpy as np
import tensorflow as tf

import losses
from benchmarks.harness import Result, conv_flops, matmul_gflops, median_time
from models import build_pspnet
from models.pspnet.inference import predict_logits
from models.pspnet import head_layer_names, inference_model
from models.training import SegmentationSGD, poly_schedule

NUM_CLASSES = 19


def forward_flops(backbone, base_width, size):
    """(nominal, executed) conv/dense FLOPs of one forward pass of the inference model at size x size."""
    static = build_pspnet(NUM_CLASSES, backbone=backbone, base_width=base_width, aux=False,
                          input_shape=(size[0], size[1], 3))
    return conv_flops(static), conv_flops(static, executed=True)


def _rates(flops, seconds, matmul):
    """(nominal / matmul ratio, note) for (nominal, executed) FLOPs done in `seconds`."""
    nominal, executed = flops
    return nominal / seconds / 1e9 / matmul, (
        f"{nominal / seconds / 1e9:.1f} GFLOP/s of {nominal / 1e9:.0f} nominal GFLOP / matmul rate; "
        f"executed {executed / 1e9:.0f} GFLOP: {executed / seconds / 1e9:.1f} GFLOP/s = "
        f"{executed / seconds / 1e9 / matmul:.2f} of matmul")


def _compiled_training_model(backbone, base_width, jit_compile):
    model = build_pspnet(NUM_CLASSES, backbone=backbone, base_width=base_width)
    model.compile(
        optimizer=SegmentationSGD(poly_schedule(0.01, 1000), l2=1e-4, head_layers=head_layer_names(model),
                                  head_lr_multiplier=10.0),
        loss={"main": losses.PixelwiseSoftmaxCrossEntropy(NUM_CLASSES),
              "aux": losses.PixelwiseSoftmaxCrossEntropy(NUM_CLASSES)},
        loss_weights={"main": 1.0, "aux": 0.4}, jit_compile=jit_compile)
    return model


def _train_step_seconds(model, x, y, repeats):
    return median_time(lambda: model.train_on_batch(x, {"main": y, "aux": y}), warmup=1, repeats=repeats)


def run(quick=False):
    backbone, base_width = ("resnet18", 8) if quick else ("resnet50", 64)
    batch, crop = (2, (64, 64)) if quick else (2, (473, 473))
    whole, full = ((96, 96), (128, 256)) if quick else ((713, 713), (1024, 2048))
    window = 64 if quick else 713
    repeats = 1 if quick else 3
    name = f"pspnet[{backbone}{'' if base_width == 64 else f'/w{base_width}'}]"
    matmul = matmul_gflops(512 if quick else 4096)
    results = [Result("matmul float32 (reference rate)", "512^2" if quick else "4096^2",
                      2 * (512 if quick else 4096) ** 3 / matmul / 1e9, throughput=f"{matmul:.1f} GFLOP/s")]
    rng = np.random.default_rng(0)

    x = tf.constant(rng.normal(size=(batch,) + crop + (3,)).astype(np.float32))
    y = tf.constant(rng.integers(0, NUM_CLASSES, size=(batch,) + crop).astype(np.int32))
    # training ~ 3 forward passes (forward, and backward for activations and for weights)
    train_flops = [3 * batch * f for f in forward_flops(backbone, base_width, crop)]
    for jit in (False, True):
        seconds = _train_step_seconds(_compiled_training_model(backbone, base_width, jit), x, y, repeats)
        ratio, note = _rates(train_flops, seconds, matmul)
        results.append(Result(f"{name} train step{' jit' if jit else ''}", f"{batch}x{crop[0]}x{crop[1]}", seconds,
                              throughput=f"{batch / seconds:.2f} img/s", ratio=ratio, target=">= 0.7", note=note))

    infer = inference_model(build_pspnet(NUM_CLASSES, backbone=backbone, base_width=base_width))
    image = tf.constant(rng.normal(size=(1,) + whole + (3,)).astype(np.float32))
    flops = forward_flops(backbone, base_width, whole)
    seconds = median_time(lambda: predict_logits(infer, image, mode="whole").numpy(), warmup=1, repeats=repeats)
    ratio, note = _rates(flops, seconds, matmul)
    results.append(Result(f"{name} inference whole", f"1x{whole[0]}x{whole[1]}", seconds,
                          throughput=f"{1 / seconds:.2f} img/s", ratio=ratio, target=">= 0.85", note=note))

    image = tf.constant(rng.normal(size=(1,) + full + (3,)).astype(np.float32))
    seconds = median_time(lambda: predict_logits(infer, image, mode="sliding", crop_size=window).numpy(),
                          warmup=1, repeats=repeats)
    stride = -(-2 * window // 3)
    windows = (-(-(full[0] - window) // stride) + 1) * (-(-(full[1] - window) // stride) + 1)
    flops = [windows * f for f in forward_flops(backbone, base_width, (window, window))]
    ratio, note = _rates(flops, seconds, matmul)
    results.append(Result(f"{name} inference sliding {window}", f"1x{full[0]}x{full[1]}", seconds,
                          throughput=f"{1 / seconds:.3f} img/s", ratio=ratio, target=">= 0.85",
                          note=f"{windows} windows; {note}"))
    return results

"""Where a PSPNet-50 training step's time goes, by ablation: `python -m benchmarks.ablation`.

Times the 2x473 train step as shipped, at output stride 32 (no dilation), and with
every BatchNormalization replaced by an identity (a model nobody should train: it
only bounds what BatchNorm costs). Each variant runs in its own process so the
monkeypatch cannot leak. Not part of `python -m benchmarks`: about 3 minutes.
"""
import os
import subprocess
import sys

_VARIANT = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from data.cli import set_tensorflow_environment
set_tensorflow_environment()  # the CLIs' oneDNN choice
import keras, numpy as np
import models.resnet
variant = sys.argv[1]
if variant == "no_batchnorm":
    models.resnet.batch_norm = lambda name, sync_bn=False: keras.layers.Identity(name=name)
import losses
from benchmarks.harness import conv_flops, median_time
from models import build_pspnet
stride = 32 if variant == "output_stride_32" else 8
model = build_pspnet(19, "resnet50", output_stride=stride)
loss = {"main": losses.PixelwiseSoftmaxCrossEntropy(19), "aux": losses.PixelwiseSoftmaxCrossEntropy(19)}
model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=loss, loss_weights={"main": 1, "aux": 0.4})
x = np.random.default_rng(0).normal(size=(2, 473, 473, 3)).astype("float32")
y = np.zeros((2, 473, 473), "int32")
seconds = median_time(lambda: model.train_on_batch(x, {"main": y, "aux": y}), warmup=1, repeats=3, min_seconds=0)
flops = 3 * 2 * conv_flops(build_pspnet(19, "resnet50", output_stride=stride, aux=False, input_shape=(473, 473, 3)),
                         executed=True)
print(f"{variant:<20} {seconds:6.2f} s  {flops / seconds / 1e9:6.1f} conv GFLOP/s")
"""


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for variant in ("as_shipped", "output_stride_32", "no_batchnorm"):
        subprocess.run([sys.executable, "-c", _VARIANT, variant], cwd=root, check=True)


if __name__ == "__main__":
    main()

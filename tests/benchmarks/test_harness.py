"""benchmarks.harness: conv_flops's FLOP counts written out by hand for a small model; the machine's description."""
import os
import platform

import keras
import pytest

from benchmarks.harness import conv_flops, machine_description
from data.cli import cpu_feature_flags
from models.layers import PyramidConv2D


def test_conv_flops_counts_nominal_and_executed_pyramid_conv():
    x = keras.Input(shape=(10, 12, 3))
    c = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(x)  # 10x12 outputs, 3x3x3 -> 8
    p = keras.Input(shape=(2, 2, 4))
    y = PyramidConv2D(5, 3)([c, p])  # as a conv: 10x12 outputs, 3x3x(8 + 4) -> 5
    z = keras.layers.Dense(6)(y)  # 10x12 positions, 5 -> 6
    model = keras.Model([x, p], z)
    conv = 2 * 10 * 12 * 9 * 3 * 8
    dense = 2 * 10 * 12 * 5 * 6
    nominal = 2 * 10 * 12 * 9 * (8 + 4) * 5
    # convolution over the first input, then the branch: taps, along rows, along columns
    executed = 2 * 10 * 12 * 9 * 8 * 5 + 2 * (9 * 2 * 2 * 4 * 5 + 9 * 10 * 2 * 2 * 5 + 3 * 10 * 12 * 2 * 5)
    assert conv_flops(model) == conv + nominal + dense
    assert conv_flops(model, executed=True) == conv + executed + dense


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                    reason="the CPU's model and flags are read from /proc/cpuinfo, which x86-64 Linux writes")
def test_machine_description_says_whether_the_cpu_has_avx512():
    flags = cpu_feature_flags()
    expected = ", AVX-512" if "avx512f" in flags else ", AVX2, no AVX-512" if "avx2" in flags else ""
    assert machine_description().endswith(f"{os.cpu_count()} cores{expected}"), machine_description()

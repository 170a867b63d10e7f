"""Test-session setup shared by every test module.

Two logical CPU devices are configured here, at import time, because TensorFlow
only accepts a logical device configuration before its runtime initialises; the
distribution tests (MirroredStrategy with 2 replicas) need them. Everything else
runs on the first device as usual.

torch is not imported here: only the test modules that use it as a reference import
it (and torchvision), so the others run without it. torchvision's import goes through
torch._dynamo, which imports triton if it is installed, and triton's native library
segfaults the process when it is loaded after TensorFlow's (torch 2.14.1 / TF 2.21,
checked here). Triton compiles GPU kernels for torch.compile, which no test uses, so
it is made unimportable for the whole session: torch then reports "no triton"
(torch.utils._triton.has_triton_package) and torchvision imports safely at any time.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.modules.setdefault("triton", None)  # `import triton` now raises ImportError (see above)

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def two_replica_strategy():
    """One MirroredStrategy over the two logical CPUs for the whole session.

    Several MirroredStrategy objects in one process hand out the same collective
    instance keys, and their all-reduces then collide ("Shape mismatch in the
    collective instance"); sharing one strategy avoids that.
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture
def torch_seed():
    """A fixed torch seed for reference models built with random weights; torch limited to one thread
    (the two xdist workers share two cores). torch is imported here, not at the top: only its users load it."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    return 0

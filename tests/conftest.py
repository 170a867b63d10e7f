"""Test-session setup shared by every test module.

Two logical CPU devices are configured here, at import time, because TensorFlow
only accepts a logical device configuration before its runtime initialises; the
distribution tests (MirroredStrategy with 2 replicas) need them. Everything else
runs on the first device as usual.

torchvision (the reference for the converter tests) is imported first: its
import loads triton, whose native library segfaults the process when it is
loaded after TensorFlow's (torch 2.14.1 / TF 2.21, checked here).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import torch  # noqa: E402,F401  (before TensorFlow, see above)
import torchvision  # noqa: E402,F401

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
    (the two xdist workers share two cores)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return 0

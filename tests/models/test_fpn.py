"""ResNet-FPN: level shapes and strides, the top-down path, freezing the backbone."""
import math

import numpy as np
import tensorflow as tf

from models.fpn import LEVEL_STRIDES, build_resnet_fpn


def test_levels_shapes_and_channels():
    model = build_resnet_fpn(18, channels=24, base_width=16)
    out = model(np.zeros((2, 64, 96, 3), np.float32))
    assert set(out) == {"P2", "P3", "P4", "P5", "P6"}
    for level, stride in LEVEL_STRIDES.items():
        assert tuple(out[level].shape) == (2, math.ceil(64 / stride), math.ceil(96 / stride), 24), level


def test_top_down_path_carries_coarse_context_to_fine_levels():
    """P2 depends on C5 (through the top-down additions), P5 does not depend on C2's lateral."""
    model = build_resnet_fpn(18, channels=8, base_width=16)
    images = tf.constant(np.random.default_rng(0).normal(size=(1, 64, 64, 3)), tf.float32)
    lateral5 = model.get_layer("fpn_lateral5").kernel
    lateral2 = model.get_layer("fpn_lateral2").kernel
    with tf.GradientTape(persistent=True) as tape:
        out = model(images)
        p2, p5 = tf.reduce_sum(out["P2"] ** 2), tf.reduce_sum(out["P5"] ** 2)
    assert float(tf.reduce_sum(tf.abs(tape.gradient(p2, lateral5)))) > 0
    assert tape.gradient(p5, lateral2) is None


def test_p6_is_p5_subsampled():
    model = build_resnet_fpn(18, channels=8, base_width=16)
    out = model(np.random.default_rng(1).normal(size=(1, 128, 128, 3)).astype(np.float32))
    np.testing.assert_array_equal(out["P6"], out["P5"][:, ::2, ::2])


def test_freezing_the_backbone_leaves_only_fpn_weights_trainable():
    model = build_resnet_fpn(18, channels=8, base_width=16)
    everything = len(model.trainable_weights)
    model.get_layer("backbone").trainable = False
    names = {w.path.split("/")[0] for w in model.trainable_weights}
    assert names and all(name.startswith("fpn_") for name in names)
    assert len(model.trainable_weights) < everything

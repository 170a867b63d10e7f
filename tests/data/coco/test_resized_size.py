"""resized_size_int32 (no float64, for OpenVINO) against resized_size (torchvision's float64 rule), everywhere."""
import math

import numpy as np
import pytest
import tensorflow as tf

from data.coco.pipeline import resized_size, resized_size_int32

SETTINGS = [(800, 1333), (96, 128), (640, 1024)]


def _torchvision(height, width, short_side, long_side):
    """torchvision's GeneralizedRCNNTransform size, as Python floats compute it."""
    scale = min(short_side / min(height, width), long_side / max(height, width))
    return math.floor(height * scale), math.floor(width * scale)


@pytest.mark.parametrize("short_side, long_side", SETTINGS)
def test_equal_to_the_float64_rule_on_every_size_up_to_2000(short_side, long_side):
    h, w = (grid.ravel() for grid in np.meshgrid(np.arange(1, 2001), np.arange(1, 2001), indexing="ij"))
    expected = resized_size(h, w, short_side, long_side)
    found = resized_size_int32(h, w, short_side, long_side)
    for axis in (0, 1):
        np.testing.assert_array_equal(found[axis].numpy(), expected[axis].numpy())


def test_the_sizes_where_float64_rounds_one_below():
    # 97 * (800 / 97) = 799.9999999999999 in float64, 417 * (128 / 417) likewise: torchvision resizes to 799 / 127.
    for (height, width, short_side, long_side) in [(97, 200, 800, 1333), (417, 301, 96, 128)]:
        expected = _torchvision(height, width, short_side, long_side)
        assert min(expected) < min(short_side, long_side) or max(expected) < max(short_side, long_side)
        found = resized_size_int32(height, width, short_side, long_side)
        assert (int(found[0]), int(found[1])) == expected


@pytest.mark.slow
def test_openvino_computes_it_as_tensorflow_does(tmp_path):
    """Through tf2onnx into OpenVINO's CPU plugin, where resized_size's float64 becomes float32 (and moves)."""
    import openvino
    import tf2onnx

    rng = np.random.default_rng(0)
    h = np.concatenate([rng.integers(1, 4000, 20000), [417, 97, 480]]).astype(np.int32)
    w = np.concatenate([rng.integers(1, 4000, 20000), [301, 200, 640]]).astype(np.int32)
    spec = [tf.TensorSpec([None], tf.int32, name="h"), tf.TensorSpec([None], tf.int32, name="w")]
    compiled = {}
    for name, rule in (("int32", resized_size_int32), ("float64", resized_size)):
        fn = tf.function(lambda a, b, rule=rule: tf.stack(rule(a, b, 96, 128), axis=1), input_signature=spec)
        tf2onnx.convert.from_function(fn, spec, output_path=str(tmp_path / f"{name}.onnx"))
        model = openvino.Core().compile_model(str(tmp_path / f"{name}.onnx"), "CPU",
                                              {"INFERENCE_PRECISION_HINT": "f32"})
        compiled[name] = np.asarray(model({"h": h, "w": w})[model.outputs[0]])
    expected = np.stack([t.numpy() for t in resized_size(h, w, 96, 128)], axis=1)
    np.testing.assert_array_equal(compiled["int32"], expected)
    assert (compiled["float64"] != expected).any()  # what the int32 rule is for: the float64 one moves there

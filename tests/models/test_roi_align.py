"""Multi-level RoIAlign: against tf.image.crop_and_resize, a float64 reference, XLA, level assignment.

References: tf.image.crop_and_resize (same bilinear kernel, sampled at the same
points), a NumPy float64 transcription of Detectron2's ROIAlign
bilinear_interpolate (aligned=True), and hand-computed levels.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from models.roi_align import MultiLevelRoIAlign, multilevel_roi_align, roi_levels


def _crop_and_resize_reference(features, boxes, output_size, sampling_ratio, stride):
    """RoIAlign via tf.image.crop_and_resize: its corner-aligned grid placed on RoIAlign's sample points,
    then the sampling_ratio x sampling_ratio samples of each bin averaged."""
    _, height, width, channels = features.shape
    count = output_size * sampling_ratio
    flat = boxes.reshape(-1, 4) / stride
    step_y = (flat[:, 2] - flat[:, 0]) / count
    step_x = (flat[:, 3] - flat[:, 1]) / count
    first_y = flat[:, 0] + 0.5 * step_y - 0.5
    first_x = flat[:, 1] + 0.5 * step_x - 0.5
    normalised = np.stack([first_y / (height - 1), first_x / (width - 1),
                           (first_y + (count - 1) * step_y) / (height - 1),
                           (first_x + (count - 1) * step_x) / (width - 1)], 1)
    image_index = np.repeat(np.arange(boxes.shape[0]), boxes.shape[1])
    crops = tf.image.crop_and_resize(features, normalised, image_index, [count, count]).numpy()
    crops = crops.reshape(-1, output_size, sampling_ratio, output_size, sampling_ratio, channels).mean((2, 4))
    return crops.reshape(*boxes.shape[:2], output_size, output_size, channels)


def _detectron2_reference(feature, box, output_size, sampling_ratio):
    """float64 transcription of Detectron2 ROIAlign (aligned=True) for one box on one [H, W, C] map."""
    height, width, _ = feature.shape
    y1, x1, y2, x2 = np.asarray(box, np.float64) - 0.5
    bin_h, bin_w = (y2 - y1) / output_size, (x2 - x1) / output_size

    def bilinear(y, x):
        if y < -1.0 or y > height or x < -1.0 or x > width:
            return np.zeros(feature.shape[-1])
        y, x = max(y, 0.0), max(x, 0.0)
        y_low, x_low = int(y), int(x)
        if y_low >= height - 1:
            y_high = y_low = height - 1
            y = float(y_low)
        else:
            y_high = y_low + 1
        if x_low >= width - 1:
            x_high = x_low = width - 1
            x = float(x_low)
        else:
            x_high = x_low + 1
        ly, lx = y - y_low, x - x_low
        hy, hx = 1.0 - ly, 1.0 - lx
        return (hy * hx * feature[y_low, x_low] + hy * lx * feature[y_low, x_high]
                + ly * hx * feature[y_high, x_low] + ly * lx * feature[y_high, x_high])

    out = np.zeros((output_size, output_size, feature.shape[-1]))
    for i in range(output_size):
        for j in range(output_size):
            for iy in range(sampling_ratio):
                for ix in range(sampling_ratio):
                    y = y1 + i * bin_h + (iy + 0.5) * bin_h / sampling_ratio
                    x = x1 + j * bin_w + (ix + 0.5) * bin_w / sampling_ratio
                    out[i, j] += bilinear(y, x)
    return out / sampling_ratio ** 2


@pytest.mark.parametrize("output_size, sampling_ratio", [(7, 1), (7, 2), (14, 2), (5, 3)])
def test_single_level_matches_crop_and_resize(output_size, sampling_ratio):
    rng = np.random.default_rng(output_size * 10 + sampling_ratio)
    features = rng.normal(size=(2, 13, 17, 3)).astype(np.float32)
    stride = 4.0
    # Boxes well inside the map (crop_and_resize extrapolates differently at the border).
    y1 = rng.uniform(4, 20, size=(2, 5))
    x1 = rng.uniform(4, 28, size=(2, 5))
    boxes = np.stack([y1, x1, y1 + rng.uniform(4, 28, (2, 5)), x1 + rng.uniform(4, 36, (2, 5))], -1).astype(np.float32)
    out = multilevel_roi_align([features], boxes, output_size=output_size, sampling_ratio=sampling_ratio,
                               min_level=2, max_level=2)
    expected = _crop_and_resize_reference(features, boxes, output_size, sampling_ratio, stride)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_border_and_outside_boxes_follow_detectron2():
    rng = np.random.default_rng(1)
    feature = rng.normal(size=(1, 6, 8, 2))
    boxes = np.array([[[-3.0, -2.0, 4.0, 5.0], [4.0, 6.0, 9.5, 11.0], [-6.0, -6.0, -1.0, -1.0],
                       [2.2, 3.3, 2.4, 3.9]]])  # straddling, past the far edge, outside, tiny
    out = multilevel_roi_align([feature.astype(np.float32)], boxes.astype(np.float32), output_size=4,
                               sampling_ratio=2, min_level=0, max_level=0)
    for r, box in enumerate(boxes[0]):
        np.testing.assert_allclose(out[0, r], _detectron2_reference(feature[0], box, 4, 2), atol=1e-5)


def test_level_assignment():
    sizes = np.array([224, 112, 448, 111.9, 223.9, 447.9, 10, 5000, 0], np.float32)
    boxes = np.stack([np.zeros_like(sizes), np.zeros_like(sizes), sizes, sizes], -1)
    # floor(4 + log2(s / 224)) clipped to [2, 5]; empty boxes go to the finest level.
    np.testing.assert_array_equal(roi_levels(boxes), [4, 3, 5, 2, 3, 4, 2, 5, 2])
    # Non-square: sqrt(w h) counts, 56 x 896 has the area of 224 x 224.
    np.testing.assert_array_equal(roi_levels(np.array([[0, 0, 56, 896]], np.float32)), [4])


def test_each_box_reads_its_level():
    rng = np.random.default_rng(2)
    height, width = 512, 512
    features = [rng.normal(size=(1, height // 2 ** k, width // 2 ** k, 2)).astype(np.float32) for k in range(2, 6)]
    boxes = np.array([[[10, 12, 40, 50], [5, 5, 120, 150], [0, 0, 300, 260], [6, 9, 500, 510]]], np.float32)
    levels = roi_levels(boxes).numpy()[0]
    assert list(levels) == [2, 3, 4, 5]
    out = multilevel_roi_align(features, boxes, output_size=7, sampling_ratio=2)
    for r, level in enumerate(levels):
        expected = _crop_and_resize_reference(features[level - 2], boxes[:, r:r + 1], 7, 2, 2.0 ** level)
        np.testing.assert_allclose(out[:, r:r + 1], expected, atol=1e-5)


def test_gradient_matches_crop_and_resize():
    rng = np.random.default_rng(3)
    features = tf.constant(rng.normal(size=(1, 12, 12, 2)), tf.float32)
    boxes = np.array([[[8.0, 10.0, 30.0, 36.0]]], np.float32)
    weights = tf.constant(rng.normal(size=(1, 1, 7, 7, 2)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(features)
        ours = tf.reduce_sum(weights * multilevel_roi_align([features], boxes, output_size=7, sampling_ratio=2,
                                                            min_level=2, max_level=2))
        theirs = tf.reduce_sum(weights * _crop_and_resize_tensor(features, boxes))
    np.testing.assert_allclose(tape.gradient(ours, features), tape.gradient(theirs, features), atol=1e-5)


def _crop_and_resize_tensor(features, boxes):
    # Differentiable version of _crop_and_resize_reference for the 7x7, ratio-2, stride-4 case.
    count, height, width = 14, 12, 12
    y1, x1, y2, x2 = (boxes[0, 0] / 4.0)
    sy, sx = (y2 - y1) / count, (x2 - x1) / count
    fy, fx = y1 + 0.5 * sy - 0.5, x1 + 0.5 * sx - 0.5
    box = [[fy / (height - 1), fx / (width - 1), (fy + 13 * sy) / (height - 1), (fx + 13 * sx) / (width - 1)]]
    crops = tf.image.crop_and_resize(features, box, [0], [count, count])
    return tf.reshape(tf.reduce_mean(tf.reshape(crops, [1, 7, 2, 7, 2, 2]), axis=[2, 4]), [1, 1, 7, 7, 2])


def test_compiles_under_xla_and_agrees_with_eager():
    rng = np.random.default_rng(4)
    features = [tf.constant(rng.normal(size=(2, 64 // 2 ** k, 96 // 2 ** k, 3)), tf.float32) for k in range(2, 6)]
    boxes = tf.constant([[[1, 2, 30, 40], [0, 0, 64, 96]], [[10, 10, 12, 14], [20, 30, 60, 90]]], tf.float32)
    layer = MultiLevelRoIAlign(output_size=5, sampling_ratio=2)
    compiled = tf.function(lambda b, f: layer([b, *f]), jit_compile=True)
    np.testing.assert_allclose(compiled(boxes, features), layer([boxes, *features]), atol=1e-5)
    # jit_compile=True really compiles here: crop_and_resize, which has no XLA kernel, fails the same way.
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.function(lambda f: tf.image.crop_and_resize(f, [[0.0, 0.0, 1.0, 1.0]], [0], [3, 3]),
                    jit_compile=True)(features[0])


def test_layer_config_round_trip():
    layer = MultiLevelRoIAlign(output_size=14, sampling_ratio=3, canonical_size=200.0, name="mask_align")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, MultiLevelRoIAlign)
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize("flat", [False, True])
def test_boxes_keep_float32_under_mixed_float16(flat):
    """Box coordinates past 1024 px (float16's spacing there is 1 px) sample where float32 boxes do.

    P2 rises by 10 per column near x = 1333, so a box moved by 0.3 px (what a float16 cast of 1333.3 does)
    changes the crop by 0.75, against 0.016 for float16's rounding of the output."""
    columns = tf.range(336, dtype=tf.float32)[None, None, :, None]
    features = [tf.tile((columns - 330.0) * 10.0, [1, 8, 1, 1])] + [
        tf.zeros([1, 8 // 2 ** k, 336 // 2 ** k, 1]) for k in range(1, 4)]
    boxes = tf.constant([[10.3, 1333.3, 14.7, 1337.7]])  # small: level 2
    expected = multilevel_roi_align(features, boxes[None], output_size=2, sampling_ratio=2)[0]
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = MultiLevelRoIAlign(output_size=2, sampling_ratio=2)
        half = [tf.cast(f, tf.float16) for f in features]  # as the FPN hands them over (exact here)
        got = (layer([boxes, *half], image_index=tf.constant([0])) if flat else layer([boxes[None], *half])[0])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert got.dtype == tf.float16
    np.testing.assert_allclose(got.numpy().astype(np.float32), expected.numpy(), atol=0.05)

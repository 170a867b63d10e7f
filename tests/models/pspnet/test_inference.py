"""Segmentation inference against NumPy references written here: window
averaging, padding, flips, scales, class maps, colours.

predict_logits runs a Grappler-optimised graph (fused conv + BN) while the
references call the model eagerly, so probabilities agree to ~1e-6, not bitwise;
the mistakes these tests target move them by far more."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from models import build_pspnet
from models.pspnet import inference
from models.pspnet.inference import colorize, overlay, predict_classes, predict_logits


@pytest.fixture(scope="module")
def tiny_pspnet():
    """A context-dependent model (its output at a pixel depends on the whole window).

    Seeded, and its classifier scaled down: with random weights and BatchNorm's initial statistics the
    activations grow through the layers, and unscaled logits can saturate the softmax at 0 / 1 (then
    a flipped view gives the same probabilities and the flip test could not tell).
    """
    keras.utils.set_random_seed(0)
    model = build_pspnet(4, "resnet18", aux=True, base_width=4)
    for name in ("head_classifier", "aux_classifier"):
        layer = model.get_layer(name)
        layer.set_weights([w * 1e-3 for w in layer.get_weights()])
    return model


def _images(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _softmax64(logits):
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _main(model, x):
    return model(x)["main"].numpy()


def _window_starts(size, crop, stride):
    """The documented grid along one axis, built window by window: the first window at 0, then one more
    `stride` further on as long as the last one ends before the image does (the fewest windows at multiples of
    stride that cover the image). Written as a loop on purpose, not as the closed-form count the code uses.

    (Not semseg's or mmsegmentation's grid: both move the last window back inside the image instead of padding
    past it, and semseg pads a small image on both sides, so their windows differ from the documented ones.)"""
    starts = [0]
    while starts[-1] + crop < size:
        starts.append(starts[-1] + stride)
    return starts


def _numpy_sliding(model, images, crop, stride):
    """Loop over the documented window grid: windows at multiples of stride, zero
    padding at the bottom/right up to the last full window; float64 averaging."""
    b, h, w, _ = images.shape
    rows, cols = _window_starts(h, crop[0], stride[0]), _window_starts(w, crop[1], stride[1])
    ph, pw = rows[-1] + crop[0], cols[-1] + crop[1]
    padded = np.zeros((b, ph, pw, 3), np.float32)
    padded[:, :h, :w] = images
    total, count = None, np.zeros((ph, pw))
    for y in rows:
        for x in cols:
            p = _softmax64(_main(model, padded[:, y : y + crop[0], x : x + crop[1]]))
            if total is None:
                total = np.zeros((b, ph, pw, p.shape[-1]))
            total[:, y : y + crop[0], x : x + crop[1]] += p
            count[y : y + crop[0], x : x + crop[1]] += 1
    return (total / count[None, :, :, None])[:, :h, :w]


def test_predict_classes_is_argmax_over_axis_3():
    logits = _images((2, 5, 7, 6))
    classes = predict_classes(logits)
    assert classes.dtype == tf.int32
    np.testing.assert_array_equal(classes.numpy(), np.argmax(logits, axis=3))


def test_whole_image_is_the_softmax_of_the_model(tiny_pspnet):
    x = _images((2, 37, 51, 3))
    np.testing.assert_allclose(predict_logits(tiny_pspnet, x).numpy(), _softmax64(_main(tiny_pspnet, x)), atol=1e-5)


def test_sliding_window_equals_whole_image_when_the_window_is_the_image(tiny_pspnet):
    x = _images((2, 45, 61, 3), seed=1)
    whole = predict_logits(tiny_pspnet, x, mode="whole")
    sliding = predict_logits(tiny_pspnet, x, mode="sliding", crop_size=(45, 61))
    np.testing.assert_allclose(sliding.numpy(), whole.numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "size, crop, stride, window_batch",
    [
        ((50, 70), (32, 40), (20, 25), 8),  # overlaps in both directions, padded borders
        ((50, 70), (32, 40), None, 1),  # default stride ceil(2/3 crop), one window per call
        ((64, 40), (32, 40), (32, 40), 4),  # tiling without overlap
        ((20, 25), (32, 40), None, 8),  # image smaller than the window
    ],
)
def test_sliding_window_matches_numpy_window_loop(tiny_pspnet, size, crop, stride, window_batch):
    x = _images((2, *size, 3), seed=2)
    got = predict_logits(tiny_pspnet, x, mode="sliding", crop_size=crop, stride=stride, window_batch=window_batch)
    stride = stride or tuple(int(np.ceil(c * 2 / 3)) for c in crop)  # semseg's test.py: ceil(crop * stride_rate 2/3)
    assert got.shape == (2, *size, 4)
    np.testing.assert_allclose(got.numpy(), _numpy_sliding(tiny_pspnet, x, crop, stride), atol=1e-5)


def test_sliding_window_of_a_pointwise_model_equals_whole_image():
    # A per-pixel model sees the same value in every window covering a pixel, so any
    # misplaced window, wrong count or wrong crop shows up as a difference.
    pointwise = keras.Sequential(
        [keras.Input((None, None, 3)), keras.layers.Conv2D(5, 1, bias_initializer="random_normal")]
    )
    x = _images((3, 71, 103, 3), seed=3)
    sliding = predict_logits(pointwise, x, mode="sliding", crop_size=(24, 30), stride=(10, 17))
    np.testing.assert_allclose(sliding.numpy(), _softmax64(pointwise(x).numpy()), atol=1e-5)


@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_flip_averaging_is_symmetric_and_averages_both_views(tiny_pspnet, mode):
    x = _images((1, 40, 53, 3), seed=4)
    kwargs = dict(mode=mode, crop_size=(32, 32), stride=(16, 16))
    flipped_input = predict_logits(tiny_pspnet, x[:, :, ::-1], flip=True, **kwargs).numpy()
    output = predict_logits(tiny_pspnet, x, flip=True, **kwargs).numpy()
    np.testing.assert_allclose(flipped_input, output[:, :, ::-1], atol=1e-5)

    plain = predict_logits(tiny_pspnet, x, **kwargs).numpy()
    mirrored = predict_logits(tiny_pspnet, np.ascontiguousarray(x[:, :, ::-1]), **kwargs).numpy()[:, :, ::-1]
    assert np.abs(plain - mirrored).max() > 1e-4  # the model is not symmetric by itself
    np.testing.assert_allclose(output, (plain + mirrored) / 2, atol=1e-5)


def test_single_scale_equals_whole_and_multi_scale_averages_resized_predictions(tiny_pspnet):
    x = _images((2, 30, 44, 3), seed=5)
    whole = _softmax64(_main(tiny_pspnet, x))
    for scales in [(1.0,), (1.0, 1.0)]:
        np.testing.assert_allclose(predict_logits(tiny_pspnet, x, scales=scales).numpy(), whole, atol=1e-5)

    got = predict_logits(tiny_pspnet, x, scales=(0.5, 1.5)).numpy()
    expected = 0.0
    for size in [(15, 22), (45, 66)]:  # round(30 * s), round(44 * s)
        p = _softmax64(_main(tiny_pspnet, tf.image.resize(x, size).numpy()))
        expected = expected + tf.image.resize(p, (30, 44)).numpy() / 2
    assert got.shape == (2, 30, 44, 4)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_new_image_sizes_do_not_retrace(tiny_pspnet):
    kwargs = dict(mode="sliding", crop_size=(17, 19), stride=(9, 9))
    before = inference._predict.experimental_get_tracing_count()
    for size in [(20, 21), (33, 18), (41, 57), (12, 70)]:
        assert predict_logits(tiny_pspnet, _images((1, *size, 3)), **kwargs).shape == (1, *size, 4)
    assert inference._predict.experimental_get_tracing_count() - before <= 2


def test_plain_callables_are_accepted_and_errors_are_clear(tiny_pspnet):
    x = _images((1, 21, 23, 3), seed=6)
    got = predict_logits(lambda images: tiny_pspnet(images)["main"], x, num_classes=4)
    np.testing.assert_allclose(got.numpy(), predict_logits(tiny_pspnet, x).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="num_classes=19"):
        predict_logits(tiny_pspnet, x, num_classes=19)
    with pytest.raises(ValueError, match="mode"):
        predict_logits(tiny_pspnet, x, mode="tiles")


def test_colorize_maps_ids_through_the_palette_and_blanks_unknown_ids():
    palette = [(128, 64, 128), (244, 35, 232), (70, 70, 70)]
    class_map = np.array([[[0, 1], [2, 255]], [[-1, 3], [1, 0]]])
    colours = colorize(class_map, palette)
    assert colours.dtype == np.uint8 and colours.shape == (2, 2, 2, 3)
    expected = np.array(
        [
            [[(128, 64, 128), (244, 35, 232)], [(70, 70, 70), (0, 0, 0)]],
            [[(0, 0, 0), (0, 0, 0)], [(244, 35, 232), (128, 64, 128)]],
        ]
    )
    np.testing.assert_array_equal(colours, expected)
    np.testing.assert_array_equal(colorize(tf.constant([[2]]), palette), [[[70, 70, 70]]])


def test_overlay_blends_with_alpha():
    image = np.array([[[0, 100, 255]]], np.uint8)
    mask = np.array([[[255, 0, 101]]], np.uint8)
    np.testing.assert_array_equal(overlay(image, mask, alpha=0.5), [[[128, 50, 178]]])
    np.testing.assert_array_equal(overlay(image, mask, alpha=0.0), image)
    np.testing.assert_array_equal(overlay(image, mask, alpha=1.0), mask)

"""pixelwise_softmax_loss / pspnet_loss against a float64 NumPy reference."""
import numpy as np
import pytest
import tensorflow as tf

import losses
from loss_references import bilinear_resize_half_pixel, pixelwise_softmax_ce

RTOL = 1e-5
C = 19


def _batch(seed, shape=(2, 12, 10), ignore_fraction=0.3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, size=shape).astype(np.int32)
    labels[rng.random(shape) < ignore_fraction] = 255
    logits = (rng.normal(size=shape + (C,)) * 3).astype(np.float32)
    return labels, logits


def test_matches_numpy_reference_with_ignored_pixels():
    labels, logits = _batch(1)
    got = losses.pixelwise_softmax_loss(labels=labels, logits=logits, num_classes=C)
    assert got.shape == () and got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), pixelwise_softmax_ce(labels, logits, C), rtol=RTOL)


def test_labels_with_trailing_channel_give_the_same_loss():
    labels, logits = _batch(2)
    a = losses.pixelwise_softmax_loss(labels=labels, logits=logits, num_classes=C)
    b = losses.pixelwise_softmax_loss(labels=labels[..., None], logits=logits, num_classes=C)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-7)


def test_any_label_outside_the_classes_is_ignored_and_ignore_label_inside_too():
    labels, logits = _batch(3, ignore_fraction=0.0)
    labels[0, 0, :] = 19  # just past the last class
    labels[1, 1, :] = -1
    got = losses.pixelwise_softmax_loss(labels=labels, logits=logits, num_classes=C)
    np.testing.assert_allclose(got.numpy(), pixelwise_softmax_ce(labels, logits, C), rtol=RTOL)
    # an ignore label that is a real class id (e.g. 0 = "unlabelled" in other datasets)
    got0 = losses.pixelwise_softmax_loss(labels=labels, logits=logits, num_classes=C, ignore_label=0)
    np.testing.assert_allclose(got0.numpy(), pixelwise_softmax_ce(labels, logits, C, ignore_label=0), rtol=RTOL)


def test_all_pixels_ignored_gives_zero_and_zero_gradient():
    _, logits = _batch(4)
    labels = np.full(logits.shape[:3], 255, np.int32)
    x = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = losses.pixelwise_softmax_loss(labels=labels, logits=x, num_classes=C)
    assert loss.numpy() == 0.0
    np.testing.assert_array_equal(tape.gradient(loss, x).numpy(), 0.0)


def test_gradient_matches_softmax_minus_one_hot_and_is_zero_on_ignored_pixels():
    labels, logits = _batch(5)
    x = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = losses.pixelwise_softmax_loss(labels=labels, logits=x, num_classes=C)
    grad = tape.gradient(loss, x).numpy()
    valid = labels != 255
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = p - np.eye(C)[np.where(valid, labels, 0)]
    want = want * valid[..., None] / valid.sum()
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-8)
    assert np.all(grad[~valid] == 0.0)


def test_extreme_logits_give_finite_loss_and_gradient():
    labels, logits = _batch(6)
    logits = np.where(logits > 0, 100.0, -100.0).astype(np.float32)
    x = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = losses.pixelwise_softmax_loss(labels=labels, logits=x, num_classes=C)
    assert np.isfinite(loss.numpy())
    assert np.all(np.isfinite(tape.gradient(loss, x).numpy()))
    np.testing.assert_allclose(loss.numpy(), pixelwise_softmax_ce(labels, logits, C), rtol=RTOL)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_logits_are_computed_in_float32(dtype):
    labels, logits = _batch(7)
    half = tf.cast(logits, dtype)
    got = losses.pixelwise_softmax_loss(labels=labels, logits=half, num_classes=C)
    assert got.dtype == tf.float32
    held = tf.cast(half, tf.float32).numpy()  # the values the half tensor really holds
    np.testing.assert_allclose(got.numpy(), pixelwise_softmax_ce(labels, held, C), rtol=RTOL)


def test_labels_larger_than_logits_are_resized_nearest_neighbour():
    labels, _ = _batch(8, shape=(2, 16, 12))
    _, logits = _batch(9, shape=(2, 8, 6))
    got = losses.pixelwise_softmax_loss(labels=labels, logits=logits, num_classes=C)
    # Half-pixel-centre nearest at a factor of 2 samples source pixel 2i+1.
    want = pixelwise_softmax_ce(labels[:, 1::2, 1::2], logits, C)
    np.testing.assert_allclose(got.numpy(), want, rtol=RTOL)


def test_upsample_logits_bilinearly_to_the_labels():
    labels, _ = _batch(10, shape=(2, 16, 12))
    _, logits = _batch(11, shape=(2, 8, 6))
    got = losses.pixelwise_softmax_loss(labels=labels, logits=logits, num_classes=C, upsample_logits=True)
    want = pixelwise_softmax_ce(labels, bilinear_resize_half_pixel(logits, 16, 12), C)
    np.testing.assert_allclose(got.numpy(), want, rtol=RTOL)


def test_sizes_known_only_at_run_time_are_resized_in_graph():
    labels, _ = _batch(12, shape=(1, 16, 12))
    _, logits = _batch(13, shape=(1, 8, 6))
    fn = tf.function(lambda l, x: losses.pixelwise_softmax_loss(labels=l, logits=x, num_classes=C),
                     input_signature=[tf.TensorSpec([None, None, None], tf.int32),
                                      tf.TensorSpec([None, None, None, C], tf.float32)])
    np.testing.assert_allclose(fn(labels, logits).numpy(),
                               pixelwise_softmax_ce(labels[:, 1::2, 1::2], logits, C), rtol=RTOL)
    same, same_logits = _batch(14, shape=(1, 8, 6))
    np.testing.assert_allclose(fn(same, same_logits).numpy(), pixelwise_softmax_ce(same, same_logits, C),
                               rtol=RTOL)


def test_pspnet_loss_is_main_plus_point_four_aux():
    labels, main = _batch(15)
    _, aux = _batch(16)
    got = losses.pspnet_loss(labels, main, aux, num_classes=C)
    want = pixelwise_softmax_ce(labels, main, C) + 0.4 * pixelwise_softmax_ce(labels, aux, C)
    np.testing.assert_allclose(got.numpy(), want, rtol=RTOL)
    got_w = losses.pspnet_loss(labels, main, aux, num_classes=C, aux_weight=1.0)
    np.testing.assert_allclose(got_w.numpy(), want + 0.6 * pixelwise_softmax_ce(labels, aux, C), rtol=RTOL)


def test_loss_class_equals_the_function_and_compiles_under_xla():
    labels, logits = _batch(17)
    loss = losses.PixelwiseSoftmaxCrossEntropy(C)
    np.testing.assert_allclose(loss(labels, logits).numpy(), pixelwise_softmax_ce(labels, logits, C), rtol=RTOL)
    compiled = tf.function(lambda l, x: loss(l, x), jit_compile=True)
    np.testing.assert_allclose(compiled(labels, logits).numpy(), pixelwise_softmax_ce(labels, logits, C), rtol=RTOL)

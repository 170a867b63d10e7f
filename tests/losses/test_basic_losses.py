"""Basic definitions against float64 NumPy written from the formulas."""
import numpy as np
import pytest
import tensorflow as tf

import losses
from loss_references import bce, bce_with_logits, logsumexp

RTOL = 1e-5
rng = np.random.default_rng(0)


def test_sigmoid_matches_formula_and_saturates_cleanly():
    x = np.array([-1000.0, -30.0, -1.0, 0.0, 2.5, 30.0, 1000.0], np.float32)
    got = losses.sigmoid(x).numpy()
    with np.errstate(over="ignore"):  # exp(1000) = inf gives the right limit 0
        want = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-30)  # a NaN or inf fails here too


def test_softmax_matches_formula_sums_to_one_and_survives_huge_logits():
    x = rng.normal(size=(4, 7)).astype(np.float32) * 5
    x[0] = [1000.0, 999.0, -1000.0, 0, 0, 0, 0]  # naive exp overflows to inf
    got = losses.softmax(x).numpy()
    want = np.exp(x - logsumexp(x.astype(np.float64))[:, None])
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)  # tighter than the elementwise rtol above


def test_softmax_along_another_axis():
    x = rng.normal(size=(3, 5, 2)).astype(np.float32)
    got = losses.softmax(x, axis=1).numpy()
    want = np.exp(x - logsumexp(x.astype(np.float64), axis=1)[:, None, :])
    np.testing.assert_allclose(got, want, rtol=RTOL)


def test_l2_loss_is_half_squared_euclidean_distance_per_sample():
    a = rng.normal(size=(6, 5)).astype(np.float32)
    b = rng.normal(size=(6, 5)).astype(np.float32)
    got = losses.l2_loss(a, b).numpy()
    want = 0.5 * np.sum((b.astype(np.float64) - a) ** 2, axis=-1)
    np.testing.assert_allclose(got, want, rtol=RTOL)


def test_binary_cross_entropy_from_probabilities_and_logits():
    t = (rng.random((5, 6)) > 0.5).astype(np.float32)
    z = rng.normal(size=(5, 6)).astype(np.float32) * 3
    p = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
    np.testing.assert_allclose(losses.binary_cross_entropy(t, p.astype(np.float32)).numpy(), bce(t, p), rtol=1e-4)
    np.testing.assert_allclose(losses.binary_cross_entropy(t, z, from_logits=True).numpy(),
                               bce_with_logits(t, z), rtol=RTOL)


def test_binary_cross_entropy_probabilities_are_clipped_not_infinite():
    got = losses.binary_cross_entropy(np.array([1.0, 0.0]), np.array([0.0, 1.0])).numpy()
    # p is clipped to [1e-7, 1 - 1e-7]; in float32, 1 - 1e-7 rounds to 1 - 2**-23.
    want = [-np.log(np.float32(1e-7)), -np.log(1.0 - np.float64(np.float32(1.0 - 1e-7)))]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_binary_cross_entropy_with_extreme_logits_is_finite_with_finite_gradient():
    t = tf.constant([1.0, 0.0, 1.0, 0.0])
    z = tf.Variable([100.0, -100.0, -100.0, 100.0])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.binary_cross_entropy(t, z, from_logits=True))
    grad = tape.gradient(loss, z)
    np.testing.assert_allclose(loss.numpy(), 200.0, rtol=RTOL)  # two confident mistakes of 100 nats each
    assert np.all(np.isfinite(grad.numpy()))


def test_categorical_cross_entropy_one_hot_sparse_and_logits_agree_with_formula():
    z = rng.normal(size=(8, 5)).astype(np.float32) * 4
    ids = rng.integers(0, 5, size=8)
    one_hot = np.eye(5, dtype=np.float32)[ids]
    want = logsumexp(z.astype(np.float64)) - z[np.arange(8), ids]
    np.testing.assert_allclose(losses.categorical_cross_entropy(ids, z, from_logits=True).numpy(), want, rtol=RTOL)
    np.testing.assert_allclose(losses.categorical_cross_entropy(one_hot, z, from_logits=True).numpy(), want, rtol=RTOL)
    probs = np.exp(z - logsumexp(z.astype(np.float64))[:, None])
    np.testing.assert_allclose(losses.categorical_cross_entropy(ids, probs.astype(np.float32)).numpy(), want,
                               rtol=1e-4)
    np.testing.assert_allclose(losses.categorical_cross_entropy(one_hot, probs.astype(np.float32)).numpy(), want,
                               rtol=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_basic_losses_accept_half_precision_and_return_float32(dtype):
    z = tf.cast(tf.constant([[2.0, -1.0, 0.5]]), dtype)
    t = tf.constant([[1.0, 0.0, 1.0]])
    out = losses.binary_cross_entropy(t, z, from_logits=True)
    assert out.dtype == tf.float32
    zz = tf.cast(z, tf.float32).numpy().astype(np.float64)  # the values the half tensor really holds
    np.testing.assert_allclose(out.numpy(), bce_with_logits(t.numpy(), zz), rtol=RTOL)
    assert losses.categorical_cross_entropy(tf.constant([0]), z, from_logits=True).dtype == tf.float32

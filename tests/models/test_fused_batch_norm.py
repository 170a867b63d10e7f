"""FusedBatchNormalization against a float64 NumPy batch norm and the Keras layer."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from models.layers import FusedBatchNormalization


def _pair(momentum=0.9, epsilon=1e-3):
    rng = np.random.default_rng(0)
    weights = [rng.uniform(0.5, 2.0, 5), rng.normal(size=5), rng.normal(size=5), rng.uniform(0.5, 2.0, 5)]
    layers = []
    for cls in (FusedBatchNormalization, keras.layers.BatchNormalization):
        layer = cls(momentum=momentum, epsilon=epsilon)
        layer.build((None, 6, 7, 5))
        layer.set_weights([w.astype(np.float32) for w in weights])
        layers.append(layer)
    return layers, weights


def test_training_step_matches_numpy_batch_norm_and_moving_averages():
    (fused, _), (gamma, beta, mean0, var0) = _pair()
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(4, 6, 7, 5))
    y = fused(x.astype(np.float32), training=True).numpy()
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # biased, as Keras normalises
    np.testing.assert_allclose(y, gamma * (x - mean) / np.sqrt(var + 1e-3) + beta, rtol=1e-4, atol=1e-4)
    n = x.size // 5
    np.testing.assert_allclose(fused.moving_mean.numpy(), 0.9 * mean0 + 0.1 * mean, rtol=1e-5)
    # The kernel decides whether the running variance takes the biased or the Bessel-corrected batch
    # variance (oneDNN: biased, as Keras; TF's generic and GPU kernels: corrected): accept exactly those two.
    moving = fused.moving_variance.numpy()
    candidates = [0.9 * var0 + 0.1 * var, 0.9 * var0 + 0.1 * var * n / (n - 1)]
    assert any(np.allclose(moving, c, rtol=1e-5) for c in candidates), (moving, candidates)


def test_inference_and_gradients_equal_the_keras_layer():
    (fused, plain), _ = _pair()
    x = tf.constant(np.random.default_rng(2).normal(size=(3, 6, 7, 5)).astype(np.float32))
    np.testing.assert_allclose(fused(x, training=False).numpy(), plain(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
    grads = []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) ** 2 * tf.range(5, dtype=tf.float32))
        grads.append(tape.gradient(loss, [x, layer.gamma.value, layer.beta.value]))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_falls_back_to_the_keras_path(dtype):
    (fused, plain), _ = _pair()
    x = tf.cast(np.random.default_rng(3).normal(size=(2, 6, 7, 5)), dtype)
    np.testing.assert_allclose(tf.cast(fused(x, training=True), tf.float32).numpy(),
                               tf.cast(plain(x, training=True), tf.float32).numpy(), rtol=1e-2, atol=1e-2)


def test_round_trips_through_a_keras_file(tmp_path):
    inputs = keras.Input((6, 7, 5))
    model = keras.Model(inputs, FusedBatchNormalization(momentum=0.8, name="bn")(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert isinstance(loaded.get_layer("bn"), FusedBatchNormalization) and loaded.get_layer("bn").momentum == 0.8


def _op_types(layer, x, training):
    graph = tf.function(lambda t: layer(t, training=training)).get_concrete_function(x).graph
    return {op.type for op in graph.get_operations()}


def test_training_and_inference_run_the_fused_kernel():
    (fused, plain), _ = _pair()
    x = tf.TensorSpec((2, 6, 7, 5), tf.float32)
    assert any(t.startswith("FusedBatchNorm") for t in _op_types(fused, x, True))
    assert not any(t.startswith("FusedBatchNorm") for t in _op_types(plain, x, True))
    assert any(t.startswith("FusedBatchNorm") for t in _op_types(fused, x, False))


def test_frozen_layer_in_a_training_step_is_an_affine_map_whose_gradient_keeps_no_input():
    # A frozen BN (trainable=False) called with training=True, as in the detector's training step:
    # the moving statistics, and an input gradient of upstream * gamma / sqrt(var + eps) (NumPy, float64)
    # computed without the fused gradient kernel (which would keep the input alive for the backward pass).
    (fused, _), (gamma, beta, mean, var) = _pair()
    fused.trainable = False
    x = np.random.default_rng(4).normal(size=(2, 6, 7, 5))
    upstream = np.random.default_rng(5).normal(size=x.shape)
    scale = gamma / np.sqrt(var + 1e-3)

    def step(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = fused(t, training=True)
            loss = tf.reduce_sum(y * upstream.astype(np.float32))
        return y, tape.gradient(loss, t)

    y, grad = step(tf.constant(x, tf.float32))
    np.testing.assert_allclose(y.numpy(), (x - mean) * scale + beta, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad.numpy(), upstream * scale, rtol=1e-5, atol=1e-5)
    graph = tf.function(step).get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph
    assert not any(op.type.startswith("FusedBatchNorm") for op in graph.get_operations())

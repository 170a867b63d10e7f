"""models.layers.same_conv2d / SameConv2D against TensorFlow's own convolution (values and both gradients);
pointwise_conv2d's dtypes."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from models import layers
from models.layers import SameConv2D, pointwise_conv2d, same_conv2d


def _reference(x, kernel, bias):
    y = tf.nn.conv2d(x, kernel, strides=1, padding="SAME")
    return y if bias is None else y + bias


def _values_and_gradients(conv, x, kernel, bias, upstream):
    with tf.GradientTape() as tape:
        watched = [x, kernel] + ([] if bias is None else [bias])
        tape.watch(watched)
        y = conv(x, kernel, bias)
        loss = tf.reduce_sum(y * upstream)
    return [y, *tape.gradient(loss, watched)]


# (x shape, kernel shape): 3x3 as in the detector, non-square kernels, a kernel larger than the image.
SHAPES = [((2, 9, 11, 3), (3, 3, 3, 4)), ((1, 4, 4, 2), (1, 3, 2, 5)), ((3, 6, 5, 2), (5, 1, 2, 3)),
          ((2, 2, 3, 4), (5, 5, 4, 2))]


@pytest.mark.parametrize("x_shape, kernel_shape", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("strip_floats", [1, 256, 1 << 22])  # one row per strip, a few rows, whole images
def test_values_and_gradients_match_tensorflows_convolution(monkeypatch, x_shape, kernel_shape, with_bias,
                                                            strip_floats):
    monkeypatch.setattr(layers, "STRIP_FLOATS", strip_floats)
    rng = np.random.default_rng(sum(x_shape) + strip_floats)
    x = tf.constant(rng.normal(size=x_shape))  # float64: the gradients compared to 1e-10
    kernel = tf.constant(rng.normal(size=kernel_shape))
    bias = tf.constant(rng.normal(size=kernel_shape[-1:])) if with_bias else None
    upstream = tf.constant(rng.normal(size=(*x_shape[:3], kernel_shape[-1])))
    expected = _values_and_gradients(_reference, x, kernel, bias, upstream)
    eager = _values_and_gradients(same_conv2d, x, kernel, bias, upstream)
    # In a graph with unknown sizes, as in the detector's training step.
    specs = [tf.TensorSpec([None, None, None, x_shape[-1]], tf.float64), tf.TensorSpec(kernel_shape, tf.float64)]
    arguments = [x, kernel] + ([] if bias is None else [bias])
    specs += [tf.TensorSpec(kernel_shape[-1:], tf.float64)] if with_bias else []
    graph = tf.function(lambda x, kernel, bias=None: _values_and_gradients(same_conv2d, x, kernel, bias, upstream),
                        input_signature=specs)
    compiled = graph(*arguments)
    xla = tf.function(lambda x, kernel, bias=None: _values_and_gradients(same_conv2d, x, kernel, bias, upstream),
                      jit_compile=True)  # TensorFlow's gradient ops there (same_conv2d says why)
    for ours in (eager, compiled, xla(*arguments)):
        for got, want in zip(ours, expected):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10, atol=1e-10)


def test_layer_matches_conv2d_on_the_same_weights_and_round_trips():
    x = np.random.default_rng(0).normal(size=(2, 12, 10, 4)).astype(np.float32)
    reference = keras.layers.Conv2D(6, 3, padding="same", activation="relu")
    ours = SameConv2D(6, 3, padding="same", activation="relu")
    reference.build(x.shape)
    ours.build(x.shape)
    ours.set_weights([w + 0.1 for w in reference.get_weights()])  # a nonzero bias
    reference.set_weights(ours.get_weights())
    np.testing.assert_array_equal(ours(x).numpy(), reference(x).numpy())
    clone = keras.layers.deserialize(keras.layers.serialize(ours))
    assert isinstance(clone, SameConv2D) and clone.get_config() == ours.get_config()


@pytest.mark.parametrize("conv, kernel_shape", [(same_conv2d, [3, 3, 3, 2]), (pointwise_conv2d, [1, 1, 3, 2])])
def test_float16_inputs_keep_float16(conv, kernel_shape):
    x = tf.random.normal([1, 6, 6, 3], dtype=tf.float16)
    kernel = tf.random.normal(kernel_shape, dtype=tf.float16)
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = conv(x, kernel)
    dx, dkernel = tape.gradient(y, [x, kernel])
    assert y.dtype == dx.dtype == dkernel.dtype == tf.float16


@pytest.mark.parametrize("arguments", [dict(strides=2), dict(padding="valid"), dict(dilation_rate=2),
                                       dict(kernel_size=2)])
def test_refuses_what_it_does_not_compute(arguments):
    with pytest.raises(ValueError, match="SameConv2D"):
        SameConv2D(4, **{"kernel_size": 3, "padding": "same", **arguments})

"""models.layers.pointwise_conv2d against TensorFlow's 1 x 1 convolution, and the RPN head that uses it."""
import numpy as np
import pytest
import tensorflow as tf

from models.layers import pointwise_conv2d
from models.mask_rcnn.rpn import RPNHead


def _values_and_gradients(conv, x, kernel, upstream):
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = conv(x, kernel)
        loss = tf.reduce_sum(y * upstream)
    return [y, *tape.gradient(loss, [x, kernel])]


def _reference(x, kernel):
    return tf.nn.conv2d(x, kernel, strides=1, padding="VALID")


@pytest.mark.parametrize("x_shape, filters", [((2, 5, 7, 6), 4), ((1, 1, 1, 3), 15), ((3, 4, 2, 1), 2)])
def test_values_and_gradients_match_tensorflows_convolution(x_shape, filters):
    rng = np.random.default_rng(sum(x_shape))
    x = tf.constant(rng.normal(size=x_shape))  # float64: compared to 1e-12
    kernel = tf.constant(rng.normal(size=(1, 1, x_shape[-1], filters)))
    upstream = tf.constant(rng.normal(size=(*x_shape[:3], filters)))
    expected = _values_and_gradients(_reference, x, kernel, upstream)
    eager = _values_and_gradients(pointwise_conv2d, x, kernel, upstream)
    # In a graph with unknown sizes, as in the detector's training step, and under XLA.
    graph = tf.function(lambda x, kernel: _values_and_gradients(pointwise_conv2d, x, kernel, upstream),
                        input_signature=[tf.TensorSpec([None, None, None, x_shape[-1]], tf.float64),
                                         tf.TensorSpec([1, 1, x_shape[-1], filters], tf.float64)])
    xla = tf.function(lambda x, kernel: _values_and_gradients(pointwise_conv2d, x, kernel, upstream),
                      jit_compile=True)
    for ours in (eager, graph(x, kernel), xla(x, kernel)):
        assert ours[0].shape == expected[0].shape
        for got, want in zip(ours, expected):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-12)


def test_rpn_head_gives_what_its_objectness_and_deltas_layers_give_one_by_one():
    """The head runs its two 1 x 1 layers as one convolution (RPNHead._predict); their own calls, level by
    level, are the reference, for the outputs and for the gradients of every weight and level."""
    head = RPNHead(num_anchors=3, channels=8)
    rng = np.random.default_rng(0)
    levels = [tf.constant(rng.normal(size=(2, size, size + 3, 8)), tf.float32) for size in (6, 3, 1)]
    head.build([level.shape for level in levels])
    for weight in head.weights:  # nonzero biases, weights of the size that torchvision's initialisation gives
        weight.assign(rng.normal(size=weight.shape, scale=0.1))

    def separately(levels):
        objectness, deltas = [], []
        for level in levels:
            x = head.convs[0](level)
            objectness.append(tf.reshape(head.objectness(x), [2, -1]))
            deltas.append(tf.reshape(head.deltas(x), [2, -1, 4]))
        return tf.concat(objectness, axis=1), tf.concat(deltas, axis=1)

    results = []
    for run in (head, separately):
        with tf.GradientTape() as tape:
            tape.watch(levels)
            objectness, deltas = run(levels)
            loss = tf.reduce_sum(tf.sin(objectness)) + tf.reduce_sum(tf.cos(deltas) * [1.0, 2.0, 3.0, 4.0])
        results.append([objectness, deltas, *tape.gradient(loss, head.weights + levels)])
    assert results[0][0].shape == (2, 3 * (6 * 9 + 3 * 6 + 1 * 4)) and results[0][1].shape == (2, 3 * 76, 4)
    for got, want in zip(*results):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)

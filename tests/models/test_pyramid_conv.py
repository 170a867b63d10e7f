"""PyramidConv2D: the same numbers and gradients as Concatenate(resized branches) + Conv2D, on any size."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from models.layers import PyramidConv2D


def _inputs(rng, size, bins=(1, 2, 3, 6), x_channels=5, branch_channels=3, batch=2):
    x = rng.normal(size=(batch, *size, x_channels)).astype(np.float32)
    branches = [rng.normal(size=(batch, b, b, branch_channels)).astype(np.float32) for b in bins]
    return [tf.constant(x)] + [tf.constant(p) for p in branches]


def _concat_then_conv(inputs, kernel):
    """The plain formulation: upsample every branch with tf.image.resize, concatenate, convolve."""
    x = inputs[0]
    size = tf.shape(x)[1:3]
    stacked = tf.concat([x] + [tf.image.resize(p, size, method="bilinear") for p in inputs[1:]], axis=-1)
    return tf.nn.conv2d(stacked, kernel, strides=1, padding="SAME")


def _layer(inputs, filters=4, kernel_size=3):
    layer = PyramidConv2D(filters, kernel_size)
    layer(inputs)
    return layer


@pytest.mark.parametrize("size,kernel_size", [((11, 13), 3), ((4, 3), 3), ((1, 1), 3), ((9, 7), 5), ((6, 8), 1)])
def test_equals_concatenate_then_conv(size, kernel_size):
    # (4, 3) and (1, 1) are smaller than the 6-bin branch: the resize shrinks it there.
    rng = np.random.default_rng(0)
    inputs = _inputs(rng, size)
    layer = _layer(inputs, kernel_size=kernel_size)
    np.testing.assert_allclose(layer(inputs).numpy(), _concat_then_conv(inputs, layer.kernel).numpy(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(11, 13), (1, 1), (4, 3)])
def test_align_corners_equals_torch_interpolate_then_conv(size):
    # semseg's pyramid: F.interpolate(..., align_corners=True) of every branch, then the 3x3 conv.
    import torch

    rng = np.random.default_rng(4)
    inputs = _inputs(rng, size)
    layer = PyramidConv2D(4, 3, align_corners=True)
    layer(inputs)
    x = inputs[0]
    resized = [torch.nn.functional.interpolate(torch.from_numpy(p.numpy().transpose(0, 3, 1, 2)), size,
                                               mode="bilinear", align_corners=True).numpy().transpose(0, 2, 3, 1)
               for p in inputs[1:]]
    expected = tf.nn.conv2d(tf.concat([x] + resized, axis=-1), layer.kernel, strides=1, padding="SAME")
    np.testing.assert_allclose(layer(inputs).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    assert PyramidConv2D.from_config(layer.get_config()).align_corners


def test_gradients_equal_concatenate_then_conv():
    rng = np.random.default_rng(1)
    inputs = _inputs(rng, (10, 7))
    layer = _layer(inputs)
    upstream = tf.constant(rng.normal(size=(2, 10, 7, 4)).astype(np.float32))

    def grads(fn):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(fn() * upstream)
        return tape.gradient(loss, inputs + [layer.kernel])

    ours = grads(lambda: layer(inputs))
    plain = grads(lambda: _concat_then_conv(inputs, layer.kernel))
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


def test_one_trace_serves_every_size():
    rng = np.random.default_rng(2)
    layer = _layer(_inputs(rng, (5, 5)))
    signature = [tf.TensorSpec([None, None, None, 5])] + [tf.TensorSpec([None, b, b, 3]) for b in (1, 2, 3, 6)]
    traced = tf.function(lambda *t: layer(list(t)), input_signature=signature)
    for size in [(8, 12), (3, 17)]:
        inputs = _inputs(rng, size)
        np.testing.assert_allclose(traced(*inputs).numpy(), _concat_then_conv(inputs, layer.kernel).numpy(),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_stays_close(policy):
    rng = np.random.default_rng(3)
    inputs = _inputs(rng, (7, 9))
    layer = PyramidConv2D(4, 3, dtype=policy)
    out = layer([tf.cast(t, layer.compute_dtype) for t in inputs])
    assert out.dtype == layer.compute_dtype
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), _concat_then_conv(inputs, layer.kernel).numpy(),
                               rtol=5e-2, atol=5e-2)


def test_keras_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    inputs = _inputs(rng, (6, 6))
    symbolic = [keras.Input(shape=(None, None, 5))] + [keras.Input(shape=(b, b, 3)) for b in (1, 2, 3, 6)]
    model = keras.Model(symbolic, PyramidConv2D(4, 3, name="head_conv")(symbolic))
    path = str(tmp_path / "m.keras")
    model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(reloaded(inputs).numpy(), model(inputs).numpy(), rtol=1e-6)
    assert reloaded.get_layer("head_conv").kernel.shape == (3, 3, 5 + 4 * 3, 4)


def test_even_kernel_is_refused():
    with pytest.raises(ValueError, match="odd kernel_size"):
        PyramidConv2D(4, 2)


def test_graph_uses_only_ops_every_exporter_converts():
    """No MatrixDiag* (tf.eye at a dynamic size): OpenVINO's TensorFlow frontend has no rule for it."""
    layer = PyramidConv2D(4, 3)
    spec = [tf.TensorSpec([1, None, None, 3]), tf.TensorSpec([1, 1, 1, 3]), tf.TensorSpec([1, 2, 2, 3])]
    graph = tf.function(lambda x, p1, p2: layer([x, p1, p2])).get_concrete_function(*spec).graph
    op_types = {op.type for op in graph.get_operations()}
    assert "Conv2D" in op_types or "MatMul" in op_types or "BatchMatMulV2" in op_types
    assert not {t for t in op_types if t.startswith("MatrixDiag")}

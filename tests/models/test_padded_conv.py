"""models.layers.PaddedConv2D against ZeroPadding2D + a "valid" Conv2D (what the ResNet used before)."""
import keras
import numpy as np
import pytest

from models.layers import PaddedConv2D


@pytest.mark.parametrize("size, kernel, stride, pad, dilation", [((9, 12), 3, 2, 1, 1), ((10, 7), 7, 2, 3, 1),
                                                                  ((8, 8), 3, 1, 2, 2)])
def test_matches_zero_padding_then_valid_conv(size, kernel, stride, pad, dilation):
    x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
    reference = keras.layers.Conv2D(4, kernel, strides=stride, dilation_rate=dilation, padding="valid")
    ours = PaddedConv2D(4, kernel, pad=pad, strides=stride, dilation_rate=dilation)
    expected = reference(keras.layers.ZeroPadding2D(pad)(x)).numpy()
    ours.build(x.shape)
    ours.set_weights(reference.get_weights())
    got = ours(x).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert tuple(ours.compute_output_shape((None, *size, 3))) == (None, *expected.shape[1:])
    assert tuple(ours.compute_output_shape((None, None, None, 3))) == (None, None, None, 4)
    clone = keras.layers.deserialize(keras.layers.serialize(ours))
    assert isinstance(clone, PaddedConv2D) and clone.get_config() == ours.get_config()


def test_refuses_keras_padding():
    with pytest.raises(ValueError, match="PaddedConv2D"):
        PaddedConv2D(4, 3, pad=1, padding="same")

"""ResNet backbones: feature shapes, parameter counts, dilation, ImageNet weight mapping."""
import math

import keras
import numpy as np
import pytest

from data.normalization import INPUT_MEAN, INPUT_STD
from models.resnet import build_resnet, load_imagenet_weights


def _randomize_batch_norms(model, rng):
    """Non-trivial BN statistics so inference-mode outputs depend on every BN weight."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0.0, 0.1, c),
                    rng.normal(0.0, 0.1, c),
                    rng.uniform(0.5, 2.0, c),
                ]
            )


@pytest.mark.parametrize("depth, stem", [(18, "deep"), (34, "standard"), (50, "deep"), (101, "standard")])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_feature_shapes_on_odd_size(depth, stem, output_stride):
    base_width = 4
    model = build_resnet(depth, stem=stem, output_stride=output_stride, base_width=base_width)
    features = model(np.zeros((2, 97, 131, 3), np.float32))
    expansion = 1 if depth < 50 else 4
    strides = {"C2": 4, "C3": 8, "C4": 8 if output_stride == 8 else 16, "C5": output_stride}
    for i, key in enumerate(["C2", "C3", "C4", "C5"]):
        s = strides[key]
        channels = base_width * 2**i * expansion
        assert tuple(features[key].shape) == (2, math.ceil(97 / s), math.ceil(131 / s), channels), key


@pytest.mark.slow
def test_trainable_parameter_counts_match_torchvision():
    # torchvision's resnetN trainable parameters minus the 1000-way fc layer.
    expected = {18: 11_176_512, 34: 21_284_672, 50: 23_508_032, 101: 42_500_160, 152: 58_143_808}
    for depth, count in expected.items():
        model = build_resnet(depth, stem="standard")
        assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == count, depth


@pytest.mark.parametrize("depth, stem", [(18, "standard"), (50, "deep")])
def test_dilation_is_the_exact_a_trous_conversion(depth, stem):
    # With identical weights, removing a stride and dilating what follows computes
    # the same features on a finer grid: subsampling them gives back the strided net.
    rng = np.random.default_rng(0)
    nets = {s: build_resnet(depth, stem=stem, output_stride=s, base_width=4) for s in (8, 16, 32)}
    _randomize_batch_norms(nets[32], rng)
    for s in (8, 16):
        nets[s].set_weights(nets[32].get_weights())
    x = rng.normal(size=(1, 75, 101, 3)).astype(np.float32)
    f = {s: {k: v.numpy() for k, v in nets[s](x).items()} for s in nets}
    np.testing.assert_allclose(f[8]["C3"], f[32]["C3"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f[8]["C4"][:, ::2, ::2], f[32]["C4"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(f[8]["C5"][:, ::4, ::4], f[32]["C5"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(f[16]["C4"], f[32]["C4"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f[16]["C5"][:, ::2, ::2], f[32]["C5"], rtol=1e-4, atol=1e-4)
    assert f[8]["C5"].shape[1:3] == (10, 13)


def test_sync_bn_flag():
    model = build_resnet(18, base_width=4, sync_bn=True)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.synchronized for layer in bns)
    plain = build_resnet(18, base_width=4)
    assert not any(layer.synchronized for layer in plain.layers if isinstance(layer, keras.layers.BatchNormalization))


@pytest.mark.slow
@pytest.mark.parametrize("file_name", ["resnet50.weights.h5", "resnet50.keras"])
def test_keras_applications_weights_give_equal_features(tmp_path, file_name):
    rng = np.random.default_rng(1)
    source = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(None, None, 3))
    _randomize_batch_norms(source, rng)
    for layer in source.layers:  # conv biases are zero-initialised: make them matter
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0.0, 0.1, bias.shape)])
    path = str(tmp_path / file_name)
    if file_name.endswith(".keras"):
        source.save(path)
    else:
        source.save_weights(path)

    backbone = build_resnet(50, stem="standard", output_stride=32)
    load_imagenet_weights(backbone, 50, weights=path, caffe_input=True)
    x = rng.normal(0.0, 50.0, size=(2, 67, 45, 3)).astype(np.float32)
    outputs = {f"C{i}": source.get_layer(f"conv{i}_block{n}_out").output for i, n in [(2, 3), (3, 4), (4, 6), (5, 3)]}
    expected = keras.Model(source.input, outputs)(x)
    features = backbone(x)
    for key in outputs:
        scale = np.abs(expected[key].numpy()).max()
        np.testing.assert_allclose(features[key].numpy(), expected[key].numpy(), atol=1e-4 * scale, err_msg=key)

    # Dilation does not change the weight shapes, so the same file loads into the
    # stride-8 backbone; its stages 2-3 are unchanged.
    dilated = build_resnet(50, stem="standard", output_stride=8)
    load_imagenet_weights(dilated, 50, weights=path, caffe_input=True)
    scale = np.abs(expected["C3"].numpy()).max()
    np.testing.assert_allclose(dilated(x)["C3"].numpy(), expected["C3"].numpy(), atol=1e-4 * scale)

    # By default the caffe normalisation is folded into conv1: the backbone then takes this
    # project's (RGB - INPUT_MEAN) / INPUT_STD and must match Keras Applications fed
    # keras.applications.resnet.preprocess_input of the same pixels.
    folded = build_resnet(50, stem="standard", output_stride=32)
    load_imagenet_weights(folded, 50, weights=path)
    pixels = rng.uniform(0, 255, size=(1, 64, 64, 3)).astype(np.float32)
    ours = folded((pixels - np.array(INPUT_MEAN, np.float32)) / np.array(INPUT_STD, np.float32))["C2"].numpy()
    theirs = keras.Model(source.input, outputs["C2"])(
        keras.applications.resnet.preprocess_input(pixels.copy())).numpy()
    scale = np.abs(theirs).max()
    interior = (slice(None), slice(3, -3), slice(3, -3))  # away from the padded border (see the docstring)
    np.testing.assert_allclose(ours[interior], theirs[interior], atol=1e-4 * scale)
    np.testing.assert_allclose(ours, theirs, atol=2e-2 * scale)


def test_imagenet_weights_errors_name_the_fix():
    with pytest.raises(ValueError, match="standard stem"):
        load_imagenet_weights(build_resnet(50, stem="deep", base_width=4), 50, weights="unused.h5")
    with pytest.raises(ValueError, match="ResNet50/101/152"):
        load_imagenet_weights(build_resnet(18, stem="standard", base_width=4), 18, weights="unused.h5")
    with pytest.raises(ValueError, match="depth"):
        build_resnet(42)

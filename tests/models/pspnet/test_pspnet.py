"""PSPNet: shapes on any size, parameter counts, pyramid pooling maths, serialization,
mixed precision, synchronized BN."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from models import build_pspnet, inference_model
from models.layers import AdaptiveAveragePooling2D, ResizeLike
from models.pspnet import head_layer_names
from data.normalization import INPUT_STD


def _tiny(num_classes=5, aux=True, **kwargs):
    return build_pspnet(num_classes, "resnet18", aux, base_width=4, **kwargs)


def _randomize_batch_norms(model, rng):
    """Non-trivial BN statistics so inference-mode outputs depend on every BN weight."""
    for layer in model.get_layer("backbone").layers + model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 2, c)]
            )


def _numpy_adaptive_average(x, out_h, out_w):
    """PyTorch AdaptiveAvgPool2d in float64, written out with explicit loops. x: [B, H, W, C]."""
    x = x.astype(np.float64)
    _, h, w, _ = x.shape
    out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
    for i in range(out_h):
        r0, r1 = (i * h) // out_h, -((-(i + 1) * h) // out_h)
        for j in range(out_w):
            c0, c1 = (j * w) // out_w, -((-(j + 1) * w) // out_w)
            out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


@pytest.mark.slow
def test_trainable_parameter_counts_match_reference():
    # semseg's PSPNet50/101 and mmsegmentation's PSPNet R-50-D8 (its deep stem is 32/32/64), 19 classes.
    for backbone, layout, expected in [("resnet101", "caffe", 68_072_166), ("resnet50", "caffe", 49_080_038),
                                       ("resnet101", "semseg", 68_072_166), ("resnet50", "semseg", 49_080_038),
                                       ("resnet50", "mmseg", 48_975_494)]:
        model = build_pspnet(19, backbone, aux=True, layout=layout)
        count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        assert count == expected, (backbone, layout)


def test_layouts_differ_only_where_their_sources_do():
    caffe, semseg, mmseg = (build_pspnet(3, "resnet50", base_width=8, layout=layout)
                            for layout in ("caffe", "semseg", "mmseg"))
    for model, stride_1x1 in [(caffe, (2, 2)), (semseg, (1, 1)), (mmseg, (1, 1))]:
        assert model.get_layer("backbone").get_layer("conv3_block1_1_conv").strides == stride_1x1
    first, second = "conv5_block1_2_conv", "conv5_block2_2_conv"
    assert [semseg.get_layer("backbone").get_layer(n).dilation_rate for n in (first, second)] == [(4, 4), (4, 4)]
    assert [mmseg.get_layer("backbone").get_layer(n).dilation_rate for n in (first, second)] == [(2, 2), (4, 4)]
    assert mmseg.get_layer("backbone").get_layer("conv1_1_conv").filters == 4  # half of base_width
    assert semseg.get_layer("logits").align_corners and not mmseg.get_layer("logits").align_corners
    assert isinstance(semseg.get_layer("head_dropout"), keras.layers.SpatialDropout2D)
    assert caffe.get_config()["layout"] == "caffe" and mmseg.layout == "mmseg"
    with pytest.raises(ValueError, match="layout must be one of"):
        build_pspnet(3, "resnet50", layout="torch")
    with pytest.raises(ValueError, match="bottleneck backbone"):
        build_pspnet(3, "resnet18", layout="semseg")


def test_resize_like_align_corners_equals_torch():
    import torch

    x = np.random.default_rng(9).normal(size=(1, 3, 5, 2)).astype(np.float32)
    for size in [(7, 11), (1, 4), (3, 5)]:
        expected = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size, mode="bilinear",
                                                   align_corners=True).numpy().transpose(0, 2, 3, 1)
        got = ResizeLike(align_corners=True)([x, np.zeros((1, *size, 1), np.float32)]).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [(97, 131), (512, 1024), (713, 713)])
def test_output_shapes_on_any_size(size):
    model = _tiny(7)
    out = model(np.zeros((1, *size, 3), np.float32))
    assert set(out) == {"main", "aux"}
    for key in out:
        assert tuple(out[key].shape) == (1, *size, 7) and out[key].dtype == tf.float32, key


def test_without_aux_returns_the_main_logits_tensor():
    model = _tiny(3, aux=False, output_stride=16)
    out = model(np.zeros((2, 33, 20, 3), np.float32))
    assert isinstance(out, tf.Tensor) and tuple(out.shape) == (2, 33, 20, 3)


@pytest.mark.parametrize(
    "in_size, out_size", [((13, 7), (6, 6)), ((90, 90), (3, 3)), ((2, 3), (6, 6)), ((7, 13), (2, 3)), ((5, 5), (1, 1))]
)
def test_adaptive_pooling_is_the_exact_adaptive_average(in_size, out_size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *in_size, 3)).astype(np.float32)
    layer = AdaptiveAveragePooling2D(out_size)
    np.testing.assert_allclose(layer(x).numpy(), _numpy_adaptive_average(x, *out_size), rtol=1e-5, atol=1e-6)


def test_adaptive_pooling_gradient_is_the_transposed_average():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(1, 13, 7, 2)).astype(np.float32))
    g = rng.normal(size=(1, 6, 6, 2))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = AdaptiveAveragePooling2D(6)(x)
        loss = tf.reduce_sum(y * g)
    grad = tape.gradient(loss, x).numpy()
    expected = np.zeros((1, 13, 7, 2))
    for i in range(6):
        r0, r1 = (i * 13) // 6, -((-(i + 1) * 13) // 6)
        for j in range(6):
            c0, c1 = (j * 7) // 6, -((-(j + 1) * 7) // 6)
            expected[:, r0:r1, c0:c1] += g[:, i : i + 1, j : j + 1] / ((r1 - r0) * (c1 - c0))
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_resize_like_uses_half_pixel_centres():
    x = np.array([1.0, 5.0], np.float32).reshape(1, 1, 2, 1)
    y = ResizeLike()([x, np.zeros((1, 1, 4, 1), np.float32)]).numpy().ravel()
    # Output pixel centres at input coordinates -0.25, 0.25, 0.75, 1.25 (clamped at the ends).
    np.testing.assert_allclose(y, [1.0, 2.0, 4.0, 5.0], rtol=1e-6)


def test_inference_model_shares_weights_and_returns_main_logits():
    model = _tiny()
    _randomize_batch_norms(model, np.random.default_rng(2))
    infer = inference_model(model)
    assert {id(w) for w in infer.weights} <= {id(w) for w in model.weights}
    x = np.random.default_rng(3).normal(size=(2, 41, 37, 3)).astype(np.float32)
    out = infer(x)
    assert isinstance(out, tf.Tensor)
    np.testing.assert_allclose(out.numpy(), model(x)["main"].numpy(), rtol=1e-6, atol=1e-6)


def test_head_layer_names_are_the_non_backbone_layers_with_weights():
    model = _tiny()
    names = head_layer_names(model)
    for expected in ["ppm1_conv", "ppm6_bn", "head_conv", "head_classifier", "aux_conv", "aux_classifier"]:
        assert expected in names
    assert "backbone" not in names
    head_weights = sum(len(model.get_layer(n).trainable_weights) for n in names)
    backbone_weights = len(model.get_layer("backbone").trainable_weights)
    assert head_weights + backbone_weights == len(model.trainable_weights)


def test_keras_save_load_round_trip(tmp_path):
    model = _tiny()
    _randomize_batch_norms(model, np.random.default_rng(4))
    path = str(tmp_path / "pspnet.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    for size in [(33, 47), (64, 64)]:
        x = np.random.default_rng(5).normal(size=(1, *size, 3)).astype(np.float32)
        expected, got = model(x), loaded(x)
        for key in ("main", "aux"):
            np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        inference_model(loaded)(x).numpy(), expected["main"].numpy(), rtol=1e-5, atol=1e-5
    )


@pytest.mark.slow
def test_export_serves_any_size(tmp_path):
    model = _tiny()
    _randomize_batch_norms(model, np.random.default_rng(6))
    infer = inference_model(model)
    path = str(tmp_path / "pspnet_savedmodel")
    infer.export(path, verbose=False)
    reloaded = tf.saved_model.load(path)
    for size in [(33, 47), (80, 60)]:
        x = np.random.default_rng(7).normal(size=(2, *size, 3)).astype(np.float32)
        # The SavedModel runs a Grappler-optimised graph (fused conv + BN): rounding differs.
        np.testing.assert_allclose(reloaded.serve(x).numpy(), infer(x).numpy(), rtol=1e-4, atol=1e-4)


@pytest.fixture
def mixed_policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("mixed_policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
def test_mixed_precision_gives_float32_logits_and_finite_gradients(mixed_policy):
    model = _tiny(4)
    compute = model.get_layer("backbone").get_layer("conv2_block1_1_conv").compute_dtype
    assert compute == mixed_policy.split("_")[1]
    x = np.random.default_rng(8).normal(size=(2, 45, 39, 3)).astype(np.float32)
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = tf.reduce_mean(out["main"] ** 2) + tf.reduce_mean(out["aux"] ** 2)
    assert out["main"].dtype == tf.float32 and out["aux"].dtype == tf.float32
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)
    assert out["main"].shape == (2, 45, 39, 4)


def test_sync_bn_runs_under_mirrored_strategy(two_replica_strategy):
    strategy = two_replica_strategy  # one per process: see tests/conftest.py
    with strategy.scope():
        model = _tiny(3, sync_bn=True)
    layers = model.get_layer("backbone").layers + model.layers
    bns = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.synchronized for layer in bns)
    images = tf.random.normal((4, 33, 33, 3), seed=0)
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(images).unbatch().batch(4))

    @tf.function
    def step(x):
        return model(x, training=True)["main"]

    per_replica = strategy.run(step, args=(next(iter(dataset)),))
    shapes = [tuple(t.shape) for t in strategy.experimental_local_results(per_replica)]
    assert shapes == [(2, 33, 33, 3), (2, 33, 33, 3)]


def test_backbone_errors_name_the_fix():
    with pytest.raises(ValueError, match='stem="standard"'):
        build_pspnet(19, "resnet50", backbone_weights="imagenet")
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_pspnet(19, "resnet200")


@pytest.mark.slow
def test_backbone_weights_path_loads_keras_applications_resnet50(tmp_path):
    source = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(None, None, 3))
    path = str(tmp_path / "resnet50.weights.h5")
    source.save_weights(path)
    model = build_pspnet(19, "resnet50", stem="standard", backbone_weights=path)
    backbone = model.get_layer("backbone")
    for name in ["conv4_block6_2_conv", "conv5_block3_3_conv"]:
        np.testing.assert_array_equal(backbone.get_layer(name).kernel.numpy(), source.get_layer(name).kernel.numpy())
    # conv1 takes RGB normalised by INPUT_STD instead of caffe BGR: channels reversed, scaled by the std
    folded = source.get_layer("conv1_conv").kernel.numpy()[:, :, ::-1, :] * np.array(INPUT_STD)[None, None, :, None]
    np.testing.assert_allclose(backbone.get_layer("conv1_conv").kernel.numpy(), folded, rtol=1e-6)
    # dilated: stage 5 keeps 3x3 kernels (dilation 4) and stride 1
    assert backbone.get_layer("conv5_block1_2_conv").dilation_rate == (4, 4)
    assert backbone.get_layer("conv5_block1_1_conv").strides == (1, 1)

"""models.precision: a loaded PSPNet or detector recomputed in bfloat16 (float32 weights, geometry and outputs),
and the line that says when the CPU only emulates bfloat16."""
import numpy as np
import pytest
import tensorflow as tf
from matplotlib import cbook

from data.cli import cpu_feature_flags
from data.images import read_image
from data.normalization import normalize
from models.precision import NATIVE_BF16_FLAGS, bfloat16_note, with_precision

GEOMETRY = ("anchors", "proposals", "detections", "box_roi_align", "mask_roi_align")


def _photo(height, width):
    """grace_hopper.jpg (matplotlib's sample photo) resized: [height, width, 3] uint8."""
    rgb = read_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return tf.cast(tf.round(tf.image.resize(rgb, (height, width))), tf.uint8).numpy()


def _all_layers(model):
    return list(model._flatten_layers(include_self=False, recursive=True))


@pytest.fixture(scope="module")
def pspnet_file(tmp_path_factory):
    """A small random-weight PSPNet with its aux head, saved as train.py saves it."""
    import keras

    from models import build_pspnet

    keras.utils.set_random_seed(0)
    path = str(tmp_path_factory.mktemp("pspnet") / "pspnet.keras")
    build_pspnet(19, backbone="resnet18", base_width=8, aux=True).save(path)
    return path


def test_float32_is_the_model_itself_and_another_precision_is_refused(pspnet_file):
    from models.pspnet.inference import load_inference_model

    model = load_inference_model(pspnet_file)
    assert with_precision(model, "float32") is model
    with pytest.raises(ValueError, match="float16"):
        with_precision(model, "float16")


def test_bfloat16_pspnet_computes_in_bfloat16_on_float32_weights_and_agrees_with_float32(pspnet_file):
    from models.pspnet.inference import load_inference_model, predict_logits

    f32 = load_inference_model(pspnet_file)
    bf16 = load_inference_model(pspnet_file, "bfloat16")
    for copy in (bf16, with_precision(f32, "bfloat16")):  # the loader's path (from the PSPNet) and the direct one
        assert {v.dtype for v in copy.weights} == {"float32"}
        for a, b in zip(f32.weights, copy.weights):  # the same weights
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    policies = {layer.name: layer.dtype_policy.name for layer in _all_layers(bf16)}
    assert policies["conv1_1_conv"] == policies["head_conv"] == "mixed_bfloat16"
    assert bf16.get_layer("backbone").get_layer("conv5_block2_2_conv").compute_dtype == "bfloat16"
    # The builder keeps the classifier and the resize float32; the loaded float32 model is left as it was.
    assert policies["head_classifier"] == policies["logits"] == "float32"
    assert {layer.compute_dtype for layer in _all_layers(f32)} == {"float32"}

    images = normalize(_photo(97, 129)[None])
    expected = predict_logits(f32, images).numpy()
    found = predict_logits(bf16, images).numpy()
    assert bf16(images).dtype == tf.float32
    assert np.abs(found - expected).max() > 1e-3  # it did compute differently
    agreement = np.mean(expected.argmax(-1) == found.argmax(-1))
    assert agreement >= 0.95, agreement


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    import keras

    from models.mask_rcnn import build_mask_rcnn

    keras.utils.set_random_seed(0)
    path = str(tmp_path_factory.mktemp("detector") / "detector.keras")
    build_mask_rcnn(5, base_width=8, fpn_channels=8, mask_head_channels=8, box_head_units=16).save(path)
    return path


def test_bfloat16_detector_keeps_its_geometry_and_outputs_float32_and_detects(detector_file):
    from models.mask_rcnn.loading import load_detector
    from models.mask_rcnn.transform import detect, preprocess, run_graph

    detector = load_detector(detector_file, precision="bfloat16")
    for name in GEOMETRY + ("class_picked_masks", "categories"):
        assert detector.get_layer(name).compute_dtype == "float32", name
    assert detector.get_layer("fpn").get_layer("backbone").get_layer("conv2_block1_1_conv").compute_dtype == "bfloat16"
    box_head = detector.get_layer("box_head")
    assert box_head.compute_dtype == "bfloat16" and box_head.class_logits.compute_dtype == "float32"
    assert {v.dtype for v in detector.weights} == {"float32"}

    photo = _photo(150, 128)
    inputs = preprocess([photo], min_size=160, max_size=200)
    outputs = run_graph(detector, inputs["images"], inputs["image_sizes"])
    for key in ("boxes", "scores", "masks"):
        assert outputs[key].dtype == np.float32, key
    found = detect(detector, [photo], min_size=160, max_size=200)[0]
    assert found["boxes"].dtype == found["scores"].dtype == np.float32
    assert len(found["scores"]) > 0
    # Box arithmetic in float32: inside the image the corners are not all on bfloat16's grid (8-bit mantissa).
    boxes = found["boxes"]
    assert np.any(boxes != tf.cast(tf.cast(boxes, tf.bfloat16), tf.float32).numpy())


def test_bfloat16_note_says_when_the_cpu_emulates_bfloat16():
    assert bfloat16_note({"avx512f", "avx512_bf16"}) is None
    assert bfloat16_note({"avx512f", "amx_bf16", "amx_tile"}) is None
    assert bfloat16_note({"fp", "asimd", "bf16"}) is None  # ARM's Features
    lacking = bfloat16_note({"avx2", "avx512f", "avx512_vnni"})
    assert "emulated" in lacking and "slower than float32" in lacking and "\n" not in lacking
    assert "unknown" in bfloat16_note(set())
    # On the CPU at hand: no line exactly where /proc/cpuinfo lists a native bfloat16 flag.
    assert (bfloat16_note() is None) == bool(cpu_feature_flags() & NATIVE_BF16_FLAGS)

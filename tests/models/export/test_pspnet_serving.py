"""The served PSPNet graph against predict.py's own path (predict_image, to_label_ids), and its exports
(ONNX in onnxruntime and OpenVINO, LiteRT at a fixed size) against the Keras graph, on photo crops.

The exports are written once per module (tf2onnx takes ~15 s a graph on 2 cores)."""
import json

import keras
import matplotlib.cbook
import numpy as np
import pytest
import tensorflow as tf

from data import cityscapes
from data.images import read_image
from data.normalization import normalize
from models import build_pspnet
from models.export.onnx_loops import add_loop_passthrough_identities
from models.export.pspnet import PSPNetServing
from models.pspnet.inference import predict_logits
from models.pspnet.prediction import predict_image

CROP = (73, 57)  # larger than the 70x51 image, smaller than the 97x123 one (2 x 3 windows)
SIZES = [(97, 123), (70, 51)]
SETTINGS = {"whole": dict(mode="whole"), "sliding": dict(mode="sliding", crop_size=CROP, flip=True)}


@pytest.fixture(scope="module")
def model():
    """A 19-class PSPNet whose classifier is scaled down, so the probabilities are not saturated at 0 / 1."""
    keras.utils.set_random_seed(0)
    pspnet = build_pspnet(19, "resnet18", aux=False, base_width=8)
    layer = pspnet.get_layer("head_classifier")
    layer.set_weights([w * 0.05 for w in layer.get_weights()])
    return pspnet


@pytest.fixture(scope="module")
def photo():
    return read_image(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def _crop(photo, size, top=150, left=200):
    return np.ascontiguousarray(photo[top:top + size[0], left:left + size[1]])


@pytest.fixture(scope="module")
def servings(model):
    return {name: PSPNetServing(model, probabilities=True, **options) for name, options in SETTINGS.items()}


@pytest.fixture(scope="module")
def onnx_files(servings, tmp_path_factory):
    """{mode: (path, Identities added for OpenVINO)}: Keras's ONNX export, then the Loop fix."""
    import onnx

    folder = tmp_path_factory.mktemp("onnx")
    files = {}
    for name, serving in servings.items():
        path = str(folder / f"{name}.onnx")
        serving.export(path, format="onnx", input_signature=serving.input_signature(), verbose=False)
        proto = onnx.load(path)
        added = add_loop_passthrough_identities(proto)
        onnx.save(proto, path)
        files[name] = path, added
    return files


def _numpy(outputs):
    return {name: np.asarray(value) for name, value in outputs.items()}


def _assert_agree(got, expected, min_agreement=0.999, atol=1e-4):
    assert set(got) == set(expected)
    for name in ("class_ids", "label_ids"):
        assert got[name].dtype == np.uint8 and got[name].shape == expected[name].shape
        assert (got[name] == expected[name]).mean() >= min_agreement, name
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], atol=atol)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(SETTINGS))
def test_served_outputs_are_what_predict_py_writes(model, servings, photo, name, size):
    image = _crop(photo, size)
    got = _numpy(servings[name](tf.constant(image)))
    train_ids = predict_image(model, image, **SETTINGS[name])
    assert len(np.unique(train_ids)) > 1  # a map of one class would make the comparison weak
    assert got["class_ids"].dtype == np.uint8 and got["label_ids"].dtype == np.uint8
    np.testing.assert_array_equal(got["class_ids"], train_ids)
    np.testing.assert_array_equal(got["label_ids"], cityscapes.to_label_ids(train_ids))
    expected = predict_logits(model, normalize(image[None]), **SETTINGS[name]).numpy()[0]
    np.testing.assert_allclose(got["probabilities"], expected, atol=1e-6)
    assert got["probabilities"].shape == (*size, 19)


def test_call_batch_equals_call_per_image(servings, photo):
    images = np.stack([_crop(photo, (70, 51)), _crop(photo, (70, 51), top=300, left=100)])
    batch = _numpy(servings["sliding"].call_batch(tf.constant(images)))
    for i, image in enumerate(images):
        single = _numpy(servings["sliding"](tf.constant(image)))
        np.testing.assert_array_equal(batch["class_ids"][i], single["class_ids"])
        np.testing.assert_array_equal(batch["label_ids"][i], single["label_ids"])
        np.testing.assert_allclose(batch["probabilities"][i], single["probabilities"], atol=1e-6)


def test_label_table_class_names_and_metadata():
    # A 1x1 convolution whose argmax is round(red + 2.2) (red normalised: -2.1 .. 2.2), so a red ramp gives
    # every class 0..4: logit_k = k * (red + 2.2) - k^2 / 2.
    inputs = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(5, 1)
    pointwise = keras.Model(inputs, conv(inputs))
    k = np.arange(5, dtype=np.float32)
    conv.set_weights([np.zeros((1, 1, 3, 5), np.float32) + np.array([1, 0, 0])[:, None] * k, 2.2 * k - k ** 2 / 2])
    image = np.zeros((3, 11, 3), np.uint8)
    image[..., 0] = np.linspace(0, 255, 11).round()
    expected = np.broadcast_to(np.clip(np.round(np.asarray(normalize(image))[..., 0] + 2.2), 0, 4), (3, 11))

    outputs = PSPNetServing(pointwise)(tf.constant(image))
    assert set(outputs) == {"class_ids", "label_ids"}
    np.testing.assert_array_equal(outputs["class_ids"], expected)
    assert set(np.unique(expected)) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(outputs["label_ids"], expected)  # not 19 classes: the identity table
    table = PSPNetServing(pointwise, label_ids=[7, 8, 9])(tf.constant(image))  # 3, 4: past the end -> 0
    np.testing.assert_array_equal(table["label_ids"], np.array([7, 8, 9, 0, 0])[expected.astype(int)])

    meta = json.loads(json.dumps(PSPNetServing(pointwise, mode="sliding", crop_size=8, flip=True).metadata()))
    assert meta["family"] == "pspnet" and meta["num_classes"] == 5
    assert meta["inference"] == {"mode": "sliding", "crop_size": [8, 8], "stride": [6, 6], "flip": True}
    assert meta["class_names"] == [f"class_{k}" for k in range(5)]
    assert set(meta["outputs"]) == {"label_ids", "class_ids"}
    with pytest.raises(ValueError, match="class_names"):
        PSPNetServing(pointwise, class_names=["a"])


def test_default_label_table_is_cityscapes_to_label_ids(servings):
    meta = servings["whole"].metadata()
    assert meta["class_names"] == list(cityscapes.CLASS_NAMES)
    assert meta["label_ids"] == cityscapes.to_label_ids(np.arange(19)).tolist()
    assert meta["inference"] == {"mode": "whole", "crop_size": None, "stride": None, "flip": False}
    assert "probabilities" in meta["outputs"]


@pytest.mark.parametrize("name", list(SETTINGS))
def test_onnx_export_runs_in_onnxruntime_and_openvino(servings, onnx_files, photo, name):
    import onnxruntime
    import openvino

    path, added = onnx_files[name]
    assert (added > 0) == (name == "sliding")  # only the sliding window has a Loop
    session = onnxruntime.InferenceSession(path)
    compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for size in SIZES:
        image = _crop(photo, size)
        expected = _numpy(servings[name](tf.constant(image)))
        names = [output.name for output in session.get_outputs()]
        _assert_agree(dict(zip(names, session.run(None, {"image": image}))), expected)
        result = compiled({"image": image})
        _assert_agree({output.get_any_name(): result[output] for output in compiled.outputs}, expected)


@pytest.mark.parametrize("name, size", [("whole", (97, 123)), ("sliding", (97, 123)), ("whole", None)])
def test_litert_with_builtin_ops_only(servings, photo, name, size, tmp_path):
    # Keras's LiteRT export (ExportArchive -> SavedModel -> TFLiteConverter.from_saved_model) with the
    # converter restricted to builtin ops: it raises if any op would need the Flex (SELECT_TF_OPS) delegate.
    # Any size (None) converts for the whole image only: the sliding window's loop keeps a TensorList of
    # unknown shape then, which LiteRT lowers only with SELECT_TF_OPS.
    from ai_edge_litert.interpreter import Interpreter

    serving, path = servings[name], str(tmp_path / "model.tflite")
    serving.export(path, format="litert", input_signature=serving.input_signature(size), verbose=False,
                   target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})
    runner = Interpreter(model_path=path).get_signature_runner()
    for image_size in [size] if size else SIZES:
        image = _crop(photo, image_size)
        _assert_agree(_numpy(runner(image=image)), _numpy(serving(tf.constant(image))))

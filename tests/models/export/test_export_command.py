"""python -m models.export through its command line, as a user runs it: each format for both families, the
fresh-process verification it prints, the artifact against predict.py's own files, and the one-line refusals."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from models.export import command
from models.export.clients import load
from models.export.verify import sample_photos

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DETECTOR_FLAGS = ["--model", "mask_rcnn", "--short-side", "96", "--long-side", "128", "--score-threshold", "0.45"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny PSPNet and a tiny detector (COCO-like category ids, named classes), saved as train.py saves them."""
    from models import build_pspnet
    from models.mask_rcnn import build_mask_rcnn

    folder = tmp_path_factory.mktemp("ckpt")
    build_pspnet(19, backbone="resnet18", base_width=8, aux=False).save(folder / "pspnet.keras")
    import keras

    keras.utils.set_random_seed(0)
    detector = build_mask_rcnn(5, category_ids=(1, 3, 18, 44, 62),
                               category_names=("person", "car", "dog", "bottle", "chair"), base_width=8,
                               fpn_channels=16, mask_head_channels=8, box_head_units=32)
    # Raw random weights saturate every score at 1.0 (ties, whose order no NMS fixes) and push boxes to the
    # image's edges: scaled down, the scores spread out and the boxes stay inside (as test_detector_serving).
    head = detector.get_layer("box_head")
    head.class_logits.kernel.assign(head.class_logits.kernel * 1e-2)
    head.box_deltas.kernel.assign(head.box_deltas.kernel * 1e-3)
    detector.save(folder / "mask_rcnn.keras")
    return {"pspnet": str(folder / "pspnet.keras"), "mask_rcnn": str(folder / "mask_rcnn.keras")}


def _export(*argv):
    return command.main([str(a) for a in argv])


def _manifest(out):
    with open(os.path.join(out, "export.json")) as f:
        return json.load(f)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["saved_model", "onnx", "openvino"])
def test_pspnet_export_agrees_with_predict_in_its_runtime(checkpoints, tmp_path, capsys, fmt):
    out = tmp_path / fmt
    _export(checkpoints["pspnet"], out, "--format", fmt)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("verify")]
    assert len(lines) == 2 and all("fresh process" in line for line in lines)
    manifest = _manifest(out)
    assert manifest["format"] == fmt and manifest["family"] == "pspnet"
    assert [figure["image"] for figure in manifest["verification"]] == ["333x457", "417x301"]
    assert all(figure["pixel_agreement"] >= 0.999 for figure in manifest["verification"])


@pytest.mark.slow
def test_saved_model_gives_the_label_ids_png_predict_py_writes(checkpoints, tmp_path):
    """The SavedModel, loaded in a process that cannot import the project, against predict.py's NAME_labelIds.png."""
    import predict
    from data.images import write_png

    out, photos = tmp_path / "export", tmp_path / "photos"
    _export(checkpoints["pspnet"], out, "--format", "saved_model", "--no-verify")
    photos.mkdir()
    for number, photo in enumerate(sample_photos(), 1):
        write_png(photos / f"photo{number}.png", photo)
    predict.main(["--checkpoint", checkpoints["pspnet"], str(photos), "--out", str(tmp_path / "predicted"), "--quiet"])
    served = _run_client(tmp_path, "saved_model", out / "1", sample_photos())
    from PIL import Image

    for number, outputs in enumerate(served, 1):
        written = np.asarray(Image.open(tmp_path / "predicted" / f"photo{number}_labelIds.png"))
        assert outputs["label_ids"].dtype == np.uint8 and outputs["label_ids"].shape == written.shape
        assert np.mean(outputs["label_ids"] == written) >= 0.999


def _run_client(tmp_path, fmt, artifact, images):
    """clients.py as a script, in a fresh process where the project's packages cannot be imported."""
    np.savez(tmp_path / "in.npz", **{f"image_{i}": image for i, image in enumerate(images)})
    script = os.path.join(ROOT, "models", "export", "clients.py")
    subprocess.run([sys.executable, "-I", script, fmt, str(artifact), "in.npz", "out.npz"], cwd=tmp_path, check=True,
                   capture_output=True)
    with np.load(tmp_path / "out.npz") as found:
        outputs = [{} for _ in images]
        for key in found.files:
            index, name = key.split("/", 1)
            outputs[int(index)][name] = found[key]
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["saved_model", "onnx", "openvino"])
def test_detector_export_matches_predict_detections(checkpoints, tmp_path, fmt):
    out = tmp_path / fmt
    _export(checkpoints["mask_rcnn"], out, "--format", fmt, *DETECTOR_FLAGS)
    manifest = _manifest(out)
    assert manifest["class_names"] == {"1": "person", "3": "car", "18": "dog", "44": "bottle", "62": "chair"}
    for figure in manifest["verification"]:
        assert figure["reference"] > 0  # the 0.45 threshold keeps about a third of the scaled random model's
        assert figure["matched"] >= 0.95 * max(figure["reference"], figure["served"])
        assert figure["box_iou"] > 0.99 and figure["mask_iou"] > 0.95 and figure["score_difference"] < 1e-3


@pytest.mark.slow
def test_detector_saved_model_gives_the_detections_json_predict_py_writes(checkpoints, tmp_path):
    """The SavedModel in a process that cannot import the project, against predict.py's detections.json."""
    import predict
    from pycocotools import mask as mask_utils

    from data.images import write_png
    from models.export.verify import match_detections

    out, photos = tmp_path / "export", tmp_path / "photos"
    _export(checkpoints["mask_rcnn"], out, *DETECTOR_FLAGS, "--no-verify")
    photos.mkdir()
    for number, photo in enumerate(sample_photos(), 1):
        write_png(photos / f"photo{number}.png", photo)
    predict.main(["--model", "mask_rcnn", "--checkpoint", checkpoints["mask_rcnn"], str(photos), "--out",
                  str(tmp_path / "predicted"), "--short-side", "96", "--long-side", "128", "--score-threshold",
                  "0.45", "--quiet"])
    with open(tmp_path / "predicted" / "detections.json") as f:
        written = json.load(f)
    served = _run_client(tmp_path, "saved_model", out / "1", sample_photos())
    for number, outputs in enumerate(served, 1):
        mine = [d for d in written if d["file_name"] == f"photo{number}.png"]
        reference = {"boxes": np.array([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in mine)]),
                     "class_ids": np.array([d["category_id"] for d in mine]),
                     "scores": np.array([d["score"] for d in mine]),
                     "masks": np.array([mask_utils.decode(d["segmentation"]) for d in mine])}
        figures = match_detections(outputs, reference)
        assert figures["reference"] > 0 and figures["matched"] == figures["reference"] == figures["served"]
        # (detections.json rounds boxes to 2 decimals: small boxes lose a little IoU.)
        assert figures["box_iou"] > 0.995 and figures["mask_iou"] > 0.99 and figures["score_difference"] < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_detector_export_serves_a_photo_with_no_detection(checkpoints, tmp_path, fmt):
    """Nothing above the threshold: empty outputs, not a failed Reshape (a 0 in an ONNX shape means 'copy')."""
    out = tmp_path / fmt
    _export(checkpoints["mask_rcnn"], out, "--format", fmt, *DETECTOR_FLAGS, "--no-verify")
    photo = sample_photos()[1]
    outputs = load(fmt, str(out / ("model.onnx" if fmt == "onnx" else "model.xml")))(photo, score_threshold=1.0)
    assert int(np.asarray(outputs["num_detections"]).reshape(-1)[0]) == 0
    assert outputs["masks"].shape == (0,) + photo.shape[:2] and outputs["boxes"].shape == (0, 4)


@pytest.mark.slow
def test_detector_saved_model_uses_its_default_threshold_and_takes_another(checkpoints, tmp_path):
    out = tmp_path / "export"
    _export(checkpoints["mask_rcnn"], out, *DETECTOR_FLAGS, "--no-verify")
    photo = sample_photos()[0]
    run = load("saved_model", str(out / "1"))
    default, stricter = run(photo), run(photo, score_threshold=0.48)
    assert default["scores"].min() >= 0.45 and len(default["scores"]) > len(stricter["scores"])
    assert stricter["scores"].min() >= 0.48 and len(stricter["scores"]) > 0
    assert np.isin(default["class_ids"], [1, 3, 18, 44, 62]).all()
    assert default["masks"].shape == (len(default["scores"]),) + photo.shape[:2] and default["masks"].dtype == np.uint8
    x1, y1, x2, y2 = default["boxes"].T
    assert (x1 <= x2).all() and (y1 <= y2).all() and x2.max() <= photo.shape[1] and y2.max() <= photo.shape[0]


@pytest.mark.slow
def test_pspnet_litert_at_a_fixed_size(checkpoints, tmp_path):
    out = tmp_path / "litert"
    _export(checkpoints["pspnet"], out, "--format", "litert", "--input-size", "97,123")
    manifest = _manifest(out)
    assert manifest["input_size"] == [97, 123]
    assert all(figure["pixel_agreement"] >= 0.999 for figure in manifest["verification"])


@pytest.mark.slow
def test_detector_litert_at_a_fixed_size(checkpoints, tmp_path):
    """At a fixed size the detector converts with LiteRT's builtin ops (the NMS is NonMaxSuppressionV5)."""
    out = tmp_path / "litert"
    _export(checkpoints["mask_rcnn"], out, "--format", "litert", "--input-size", "97,123", *DETECTOR_FLAGS)
    for figure in _manifest(out)["verification"]:
        assert figure["reference"] > 0 and figure["matched"] >= 0.95 * max(figure["reference"], figure["served"])
        assert figure["box_iou"] > 0.99 and figure["score_difference"] < 1e-3


@pytest.mark.slow
def test_pspnet_int8_keeps_most_of_the_argmax(checkpoints, tmp_path):
    """NNCF int8 of a small random-weight model (flat logits, the hard case) keeps >= 80% of pixels' labels."""
    from data.images import write_png

    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for number, photo in enumerate(sample_photos() + sample_photos((200, 240)), 1):
        write_png(calibration / f"{number}.png", photo)
    out = tmp_path / "int8"
    _export(checkpoints["pspnet"], out, "--format", "openvino", "--quantize", "int8", "--calibration", calibration)
    manifest = _manifest(out)
    assert manifest["quantized"] == "int8"
    with open(out / "model.xml") as f:
        assert "FakeQuantize" in f.read()  # the IR holds int8 layers
    assert all(figure["pixel_agreement"] >= 0.80 for figure in manifest["verification"])


REFUSALS = [
    (["--format", "litert"], "--format litert: LiteRT's builtin ops need a fixed image size; pass --input-size H,W"),
    (["--format", "onnx", "--precision", "bfloat16"], "--precision bfloat16: --format onnx has no bfloat16"),
    (["--quantize", "int8", "--calibration", "."], "--quantize int8: made with OpenVINO's NNCF, for --format openvino"),
    (["--format", "openvino", "--quantize", "int8"], "--quantize int8: pass --calibration IMAGE_DIR"),
    (["--calibration", "."], "--calibration: only used with --quantize int8"),
    (["--input-size", "0,5"], "--input-size"),
]


@pytest.mark.parametrize("flags, message", REFUSALS)
def test_a_combination_the_export_cannot_take_is_one_line(checkpoints, tmp_path, flags, message):
    with pytest.raises(SystemExit) as stopped:
        _export(checkpoints["pspnet"], tmp_path / "out", *flags)
    assert str(stopped.value).startswith(message) and "\n" not in str(stopped.value)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_flags_of_the_other_family_and_a_checkpoint_of_the_other_family_are_refused(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        _export(checkpoints["mask_rcnn"], tmp_path / "out", "--model", "mask_rcnn", "--sliding")
    assert stopped.value.code == 2 and "--sliding: not used by --model mask_rcnn" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        _export(checkpoints["mask_rcnn"], tmp_path / "out", "--no-verify")
    assert "a Mask R-CNN checkpoint, not a PSPNet one; pass --model mask_rcnn" in str(stopped.value)


@pytest.mark.slow
def test_an_earlier_export_is_not_overwritten_without_overwrite(checkpoints, tmp_path):
    out = tmp_path / "out"
    _export(checkpoints["pspnet"], out, "--no-verify")
    before = os.path.getmtime(out / "export.json")
    with pytest.raises(SystemExit) as stopped:
        _export(checkpoints["pspnet"], out, "--no-verify")
    assert "exists already; pass --overwrite" in str(stopped.value)
    assert os.path.getmtime(out / "export.json") == before
    _export(checkpoints["pspnet"], out, "--no-verify", "--overwrite")
    assert _manifest(out)["verification"] is None


@pytest.mark.slow
def test_saved_model_serves_a_batch_of_equal_sizes_and_its_metadata(checkpoints, tmp_path):
    import tensorflow as tf

    out = tmp_path / "export"
    _export(checkpoints["pspnet"], out, "--no-verify", "--sliding", "--crop", "65", "--flip")
    loaded = tf.saved_model.load(str(out / "1"))
    photos = sample_photos((97, 123))
    batch = loaded.signatures["serve_batch"](images=tf.constant(np.stack(photos)))
    for index, photo in enumerate(photos):
        single = loaded.signatures["serving_default"](image=tf.constant(photo))
        np.testing.assert_array_equal(batch["label_ids"][index].numpy(), single["label_ids"].numpy())
    metadata = json.loads(loaded.signatures["metadata"]()["metadata"].numpy())
    assert metadata["inference"] == {"mode": "sliding", "crop_size": [65, 65], "stride": [44, 44], "flip": True}
    assert metadata == {key: value for key, value in _manifest(out).items() if key in metadata}


@pytest.mark.slow
def test_openvino_compiles_a_pspnet50_graph_at_any_size(tmp_path):
    """Unbounded, OpenVINO's CPU plugin refused the dilated ResNet-50 graph ("overflow while multiplying dim and
    stride"; resnet18 compiled): the export bounds the image's sides."""
    from models import build_pspnet
    from models.export import formats
    from models.export.pspnet import PSPNetServing
    from models.pspnet.model import inference_model

    model = inference_model(build_pspnet(19, "resnet50", aux=False, base_width=4, layout="semseg"))
    path = formats.write(PSPNetServing(model), str(tmp_path), "openvino")
    run = load("openvino", path)
    for photo in sample_photos():
        assert run(photo)["class_ids"].shape == photo.shape[:2]

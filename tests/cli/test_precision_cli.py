"""evaluate.py / predict.py --precision: bfloat16 end to end for both families, recorded in metrics.json, the
emulation note where the CPU lacks bfloat16, a bad value refused by argparse."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import evaluate
import predict
from cityscapes_fixtures import write_split


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny PSPNet and a tiny Mask R-CNN detector, saved as train.py saves them."""
    import keras

    from models import build_pspnet
    from models.mask_rcnn import build_mask_rcnn

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("ckpt")
    build_pspnet(19, backbone="resnet18", base_width=8).save(folder / "pspnet.keras")
    build_mask_rcnn(5, base_width=8, fpn_channels=8, mask_head_channels=8,
                    box_head_units=16).save(folder / "mask_rcnn.keras")
    return {"pspnet": str(folder / "pspnet.keras"), "mask_rcnn": str(folder / "mask_rcnn.keras")}


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "street.png"
    rows = np.linspace(0, 255, 48)[:, None, None] * np.ones((1, 64, 3))  # smooth: classes in regions, not noise
    Image.fromarray((rows + np.random.default_rng(0).integers(0, 30, (48, 64, 3))).clip(0, 255).astype(np.uint8)
                    ).save(path)
    return str(path)


def _predict(checkpoints, family, photo, out, *extra):
    resize = ["--short-side", "48", "--long-side", "64", "--score-threshold", "0"] if family == "mask_rcnn" else []
    return predict.main(["--model", family, "--checkpoint", checkpoints[family], photo, "--out", str(out), "--quiet",
                         *resize, *extra])


def test_predict_in_bfloat16_runs_for_both_families(checkpoints, photo, tmp_path):
    for family in ("pspnet", "mask_rcnn"):
        written = _predict(checkpoints, family, photo, tmp_path / family, "--precision", "bfloat16")
        assert [os.path.basename(p) for p in written] == ["street_overlay.png"]
        assert np.asarray(Image.open(written[0])).shape == (48, 64, 3)
    labels = {}
    for precision in ("float32", "bfloat16"):
        _predict(checkpoints, "pspnet", photo, tmp_path / precision, "--precision", precision)
        labels[precision] = np.asarray(Image.open(tmp_path / precision / "street_labelIds.png"))
    assert np.mean(labels["float32"] == labels["bfloat16"]) >= 0.9
    detections = json.load(open(tmp_path / "mask_rcnn" / "detections.json"))
    assert detections and all(len(d["bbox"]) == 4 for d in detections)


def test_the_note_is_printed_where_the_cpu_lacks_bfloat16(checkpoints, photo, tmp_path, monkeypatch, capsys):
    import data.cli

    monkeypatch.setattr(data.cli, "cpu_feature_flags", lambda: {"avx2", "avx512f"})
    monkeypatch.setattr(data.cli, "cpuinfo_field", lambda name: None)
    _predict(checkpoints, "pspnet", photo, tmp_path / "bf16", "--precision", "bfloat16")
    assert "warning: --precision bfloat16: this CPU lacks AVX512_BF16" in capsys.readouterr().err
    _predict(checkpoints, "pspnet", photo, tmp_path / "f32")
    assert "bfloat16" not in capsys.readouterr().err


def test_evaluate_records_the_precision_in_metrics_json(checkpoints, tmp_path):
    root = str(tmp_path / "cityscapes")
    write_split(root, "val", num_images=1)
    for precision in ("float32", "bfloat16"):
        out = tmp_path / precision
        metrics = evaluate.main(["--checkpoint", checkpoints["pspnet"], "--data", root, "--out", str(out),
                                 "--precision", precision, "--quiet"])
        assert metrics["precision"] == precision
        assert json.load(open(out / "metrics.json"))["precision"] == precision


def test_a_bad_precision_is_one_argparse_line(checkpoints, photo, tmp_path, capsys):
    for command, data in ((predict, [photo]), (evaluate, ["--data", str(tmp_path)])):
        with pytest.raises(SystemExit) as stopped:
            command.main(["--checkpoint", checkpoints["pspnet"], *data, "--out", str(tmp_path / "o"),
                          "--precision", "float16"])
        assert stopped.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--precision: invalid choice: 'float16'" in err[0], err


def test_evaluate_mask_rcnn_records_the_precision(checkpoints, tmp_path):
    from data.samples.coco import write_coco_sample

    root = str(tmp_path / "coco")
    write_coco_sample(root, num_train=1, num_val=1, size=(48, 64), seed=0)
    metrics = evaluate.main(["--model", "mask_rcnn", "--checkpoint", checkpoints["mask_rcnn"], "--data", root,
                             "--out", str(tmp_path / "eval"), "--short-side", "48", "--long-side", "64",
                             "--precision", "bfloat16", "--quiet"])
    assert metrics["precision"] == "bfloat16" and metrics["images"] == 1
    assert json.load(open(tmp_path / "eval" / "metrics.json"))["precision"] == "bfloat16"

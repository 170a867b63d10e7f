"""predict.py and evaluate.py on bad flags, files and checkpoints: one line naming it, exit 1, no traceback.

In-process calls check each message (SystemExit carries it); a few real subprocesses check
what a user sees: the exit status, a single stderr line, no "Traceback".
"""
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as official_labels
from PIL import Image

import evaluate
import predict
from cityscapes_fixtures import write_split
from data.cli import UsageError

ROOT = __file__.rsplit("/tests/", 1)[0]
# TensorFlow's C++ runtime logs a few lines at start-up on a machine without a GPU, whatever
# TF_CPP_MIN_LOG_LEVEL says ("WARNING: All log messages before absl::InitializeLog() ...",
# "I0000 ... cudart_stub.cc ..."): not the program's output, so left out when counting lines.
_TF_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl)")


def _cli(script, *args):
    result = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not _TF_LOG.match(line)]
    return result.returncode, lines, result.stderr


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny PSPNet and a tiny Mask R-CNN detector trainer, saved as train.py saves them."""
    from models import build_pspnet
    from models.mask_rcnn import DetectorTrainer, build_mask_rcnn

    folder = tmp_path_factory.mktemp("ckpt")
    build_pspnet(19, backbone="resnet18", base_width=8).save(folder / "pspnet.keras")
    detector = build_mask_rcnn(5, base_width=8, fpn_channels=8, mask_head_channels=8, box_head_units=16)
    DetectorTrainer(detector, stage="mask_head", mask_rois="gt").save(folder / "mask_rcnn.keras")
    return {"pspnet": str(folder / "pspnet.keras"), "mask_rcnn": str(folder / "mask_rcnn.keras")}


def _photo(path, size=(12, 20)):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size + (3,), dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize("flags, message", [
    (["--alpha", "1.5"], "--alpha must lie in [0, 1], got 1.5"),
    (["--alpha", "-0.1"], "--alpha must lie in [0, 1], got -0.1"),
    (["--sliding", "--crop", "0"], "--crop must be positive, got 0"),
    (["--scales", "0.5,0"], "--scales factors must be positive, got '0.5,0'"),
    (["--scales", "big"], "--scales takes positive numbers separated by commas, like 0.5,0.75,1.0, got 'big'"),
])
def test_predict_flags(tmp_path, flags, message):
    photo = _photo(tmp_path / "a.png")
    with pytest.raises(SystemExit) as error:
        predict.main(["--checkpoint", "unused.keras", photo, "--out", str(tmp_path / "out"), *flags])
    assert str(error.value) == message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--max-images", "-1"], "--max-images must be 0 or more (0 evaluates every image), got -1"),
    (["--sliding", "--crop", "0"], "--crop must be positive, got 0"),
    (["--scales", "-1"], "--scales factors must be positive, got '-1'"),
    (["--model", "mask_rcnn", "--short-side", "0"], "--short-side must be positive, got 0"),
])
def test_evaluate_flags(tmp_path, flags, message):
    with pytest.raises(SystemExit) as error:
        evaluate.main(["--checkpoint", "unused.keras", "--data", str(tmp_path), "--out", str(tmp_path / "../o"),
                       *flags])
    assert str(error.value) == message


def test_output_folder_inside_the_data_folder_is_refused(tmp_path):
    data = tmp_path / "cityscapes"
    with pytest.raises(SystemExit, match=r"--out .*cityscapes/eval: inside the dataset folder --data"):
        evaluate.main(["--checkpoint", "c.keras", "--data", str(data), "--out", str(data / "eval")])
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "a.png")
    with pytest.raises(SystemExit, match="inside the dataset folder input folder"):
        predict.main(["--checkpoint", "c.keras", str(photos), "--out", str(photos / "masks")])


def test_a_value_argparse_cannot_parse_is_one_line_too(tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        evaluate.main(["--checkpoint", "c.keras", "--data", str(tmp_path), "--out", "o", "--crop", "big"])
    assert error.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{os.path.basename(sys.argv[0])}: error: argument --crop: takes one number or two like 713 or 512,1024 "
        "(H,W), got 'big' (see --help)"]


def test_debug_shows_the_exception_itself(tmp_path):
    with pytest.raises(UsageError, match="--alpha"):
        predict.main(["--checkpoint", "c.keras", _photo(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                      "--alpha", "2", "--debug"])


def test_checkpoint_of_the_other_model_kind(tmp_path, checkpoints):
    root = str(tmp_path / "data")
    write_split(root, "val", num_images=1)
    with pytest.raises(SystemExit, match="mask_rcnn.keras: a Mask R-CNN checkpoint, not a PSPNet one; "
                                         "pass --model mask_rcnn"):
        evaluate.main(["--checkpoint", checkpoints["mask_rcnn"], "--data", root, "--out", str(tmp_path / "e")])
    with pytest.raises(SystemExit, match="pspnet.keras: a PSPNet checkpoint, not a Mask R-CNN one; "
                                         "pass --model pspnet"):
        evaluate.main(["--model", "mask_rcnn", "--checkpoint", checkpoints["pspnet"], "--data", root,
                       "--out", str(tmp_path / "e")])
    with pytest.raises(SystemExit, match="mask_rcnn.keras: a Mask R-CNN checkpoint, not a PSPNet one; "
                                         "pass --model mask_rcnn"):
        predict.main(["--checkpoint", checkpoints["mask_rcnn"], _photo(tmp_path / "a.png"), "--out",
                      str(tmp_path / "p")])
    with pytest.raises(SystemExit) as error:
        predict.main(["--model", "mask_rcnn", "--checkpoint", checkpoints["pspnet"], _photo(tmp_path / "a.png"),
                      "--out", str(tmp_path / "p")])
    assert str(error.value) == (f"--checkpoint {checkpoints['pspnet']}: a PSPNet checkpoint, not a Mask R-CNN one; "
                                "pass --model pspnet")


def test_a_mask_rcnn_file_without_the_detector_is_refused_in_one_line(tmp_path):
    """A Mask R-CNN model that is not a whole detector (here its oracle-box view, saved on its own) has no
    detections and no heads of its own to put on the ground-truth boxes: refused for both --boxes."""
    from models.mask_rcnn import build_mask_rcnn, oracle_heads_model

    path = tmp_path / "oracle.keras"
    oracle_heads_model(build_mask_rcnn(5, base_width=8, fpn_channels=8, mask_head_channels=8,
                                       box_head_units=16)).save(path)
    for boxes in ("detector", "gt"):
        with pytest.raises(SystemExit) as error:
            evaluate.main(["--model", "mask_rcnn", "--boxes", boxes, "--checkpoint", str(path), "--data",
                           str(tmp_path / "coco"), "--out", str(tmp_path / "e")])
        assert str(error.value) == (f"--checkpoint {path}: holds a Functional named 'mask_rcnn_oracle', "
                                    "not a Mask R-CNN detector")


def test_predict_bad_images_stop_or_are_skipped_and_rotated_photos_come_out_upright(tmp_path, checkpoints, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 12x20, shown 20x12
    Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(photos / "b_turned.jpg", exif=exif)
    (photos / "a_empty.png").write_bytes(b"")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(buffer, format="JPEG")
    (photos / "c_cut.jpg").write_bytes(buffer.getvalue()[:200])
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=f"^{photos}/a_empty.png: empty file"):
        predict.main(["--checkpoint", checkpoints["pspnet"], str(photos), "--out", str(out)])
    capsys.readouterr()
    written = predict.main(["--checkpoint", checkpoints["pspnet"], str(photos), "--out", str(out), "--skip-bad",
                            "--quiet"])  # the warnings alone on stderr
    assert written == [str(out / "b_turned_overlay.png")]
    assert np.array(Image.open(out / "b_turned_labelIds.png")).shape == (20, 12)
    warnings = capsys.readouterr().err.strip().splitlines()
    assert warnings[0].startswith(f"warning: skipped: {photos}/a_empty.png: empty file")
    assert warnings[1].startswith(f"warning: skipped: {photos}/c_cut.jpg: truncated JPEG")
    assert warnings[2] == "warning: skipped 2 of 3 images that could not be read (--skip-bad)"


def test_evaluate_truncated_cityscapes_image_stops_or_is_skipped(tmp_path, checkpoints, capsys):
    root, out = str(tmp_path / "data"), str(tmp_path / "eval")
    (_, good_label), _ = write_split(root, "val", num_images=2)
    bad = os.path.join(root, "leftImg8bit", "val", "testcity", "testcity_000001_000019_leftImg8bit.png")
    with open(bad, "r+b") as f:
        f.truncate(os.path.getsize(bad) // 2)
    with pytest.raises(SystemExit, match=f"^{bad}: truncated PNG"):
        evaluate.main(["--checkpoint", checkpoints["pspnet"], "--data", root, "--out", out])
    capsys.readouterr()
    metrics = evaluate.main(["--checkpoint", checkpoints["pspnet"], "--data", root, "--out", out, "--skip-bad"])
    warnings = capsys.readouterr().err.strip().splitlines()
    assert warnings[0].startswith(f"warning: skipped: {bad}: truncated PNG")
    assert warnings[-1] == ("warning: 1 val examples with bad files were skipped and not scored "
                            "(--skip-bad; listed above)")
    assert sorted(name for name in os.listdir(out) if name.endswith("_pred_labelIds.png")) == [
        "testcity_000000_000019_pred_labelIds.png"]
    # damage inside the compressed data passes the header check; TensorFlow's error is traced to the file
    os.remove(bad)
    good_image = bad.replace("000001", "000000")
    with open(good_image, "rb") as f:
        data = bytearray(f.read())
    start = data.index(b"IDAT") + 40
    data[start:start + 64] = bytes(64)
    with open(good_image, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(SystemExit, match=f"^{good_image}: damaged PNG data"):
        evaluate.main(["--checkpoint", checkpoints["pspnet"], "--data", root, "--out", out, "--overwrite"])
    # scored: exactly the evaluated pixels of the one good label (official trainIds 0..18)
    evaluated = sum(int(np.sum(good_label == label.id)) for label in official_labels if 0 <= label.trainId < 19)
    assert np.sum(metrics["confusion_matrix"]) == evaluated > 0


@pytest.mark.slow
def test_what_a_user_sees_one_line_exit_1_no_traceback(tmp_path, checkpoints):
    photo = _photo(tmp_path / "a.png")
    (tmp_path / "empty.png").write_bytes(b"")
    write_split(str(tmp_path / "data"), "val", num_images=1)
    runs = [
        ("predict.py", ["--checkpoint", "c.keras", photo, "--out", str(tmp_path / "o"), "--alpha", "3"], "--alpha"),
        ("predict.py", ["--checkpoint", checkpoints["pspnet"], str(tmp_path / "empty.png"), "--out",
                        str(tmp_path / "o")], str(tmp_path / "empty.png")),
        ("evaluate.py", ["--checkpoint", checkpoints["mask_rcnn"], "--data", str(tmp_path / "data"), "--out",
                         str(tmp_path / "e")], checkpoints["mask_rcnn"]),
        ("evaluate.py", ["--checkpoint", checkpoints["pspnet"], "--data", str(tmp_path / "missing"), "--out",
                         str(tmp_path / "e")], str(tmp_path / "missing")),
    ]
    for script, args, named in runs:
        status, lines, stderr = _cli(script, *args)
        assert status == 1, stderr
        assert len(lines) == 1 and named in lines[0], stderr
        assert "Traceback" not in stderr
    status, lines, stderr = _cli("predict.py", "--checkpoint", "c.keras", photo, "--out", str(tmp_path / "o"),
                                 "--crop", "-3", "--debug")
    assert status == 1 and "Traceback" in stderr and "UsageError: --crop must be positive" in stderr

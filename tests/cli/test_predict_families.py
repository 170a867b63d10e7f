"""predict.py: PSPNet and Mask R-CNN run the same loop (data.image_files), so a bad file, an existing output
and two images of one name behave the same for both: the same message, the same warnings, the same count."""
import io
import os

import numpy as np
import pytest
from PIL import Image

import predict
from data.images import BadImageError

FAMILIES = ("pspnet", "mask_rcnn")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny PSPNet and a tiny Mask R-CNN detector, saved as train.py saves them."""
    from models import build_pspnet
    from models.mask_rcnn import build_mask_rcnn

    folder = tmp_path_factory.mktemp("ckpt")
    build_pspnet(19, backbone="resnet18", base_width=8).save(folder / "pspnet.keras")
    build_mask_rcnn(5, category_ids=(1, 3, 18, 44, 62), base_width=8, fpn_channels=16, mask_head_channels=8,
                    box_head_units=32).save(folder / "mask_rcnn.keras")
    return {"pspnet": str(folder / "pspnet.keras"), "mask_rcnn": str(folder / "mask_rcnn.keras")}


def _photos(folder):
    """a_good.png (readable) and b_cut.png (a PNG cut in half: no IEND chunk)."""
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "a_good.png")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    (folder / "b_cut.png").write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    return folder


def _predict(checkpoints, family, *args):
    resize = ["--short-side", "32", "--long-side", "64"] if family == "mask_rcnn" else []  # Mask R-CNN's flags
    return predict.main(["--model", family, "--checkpoint", checkpoints[family], *resize, "--quiet",
                         *map(str, args)])


def _warnings(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]


def test_a_truncated_png_stops_both_families_or_is_skipped_by_both(checkpoints, tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    outcomes = {}
    for family in FAMILIES:
        out = tmp_path / f"out_{family}"
        with pytest.raises(SystemExit) as stopped:
            _predict(checkpoints, family, photos, "--out", out)
        capsys.readouterr()
        written = _predict(checkpoints, family, photos, "--out", tmp_path / f"skipped_{family}", "--skip-bad")
        outcomes[family] = (str(stopped.value), [os.path.relpath(p, tmp_path / f"skipped_{family}") for p in written],
                            _warnings(capsys))
    assert outcomes["pspnet"] == outcomes["mask_rcnn"]
    message, written, warnings = outcomes["pspnet"]
    assert message.startswith(f"{photos}/b_cut.png: truncated PNG")
    assert written == ["a_good_overlay.png"]
    assert len(warnings) == 2
    assert warnings[0].startswith(f"warning: skipped: {photos}/b_cut.png: truncated PNG")
    assert warnings[1] == "warning: skipped 1 of 2 images that could not be read (--skip-bad)"


def test_a_missing_file_is_named_by_both_families_with_or_without_skip_bad(checkpoints, tmp_path):
    messages = set()
    for family in FAMILIES:
        for extra in ([], ["--skip-bad"]):
            with pytest.raises(SystemExit) as error:
                _predict(checkpoints, family, tmp_path / "missing.png", "--out", tmp_path / "out", *extra)
            messages.add(str(error.value))
    assert messages == {f"{tmp_path}/missing.png: no such file or folder"}
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_file_gone_after_listing_stops_the_loop_or_is_skipped(checkpoints, tmp_path, family, capsys):
    """The library loop itself (predict_files): a path that vanished since find_images listed it is a bad file."""
    from models.mask_rcnn.loading import load_detector
    from models.mask_rcnn.prediction import predict_files as detector_files
    from models.pspnet.inference import load_inference_model
    from models.pspnet.prediction import predict_files as pspnet_files

    photos = _photos(tmp_path / "photos")
    paths = [str(photos / "a_good.png"), str(photos / "gone.png")]
    if family == "pspnet":
        model, run = load_inference_model(checkpoints[family]), pspnet_files
    else:
        model, run = load_detector(checkpoints[family]), detector_files
    with pytest.raises(BadImageError, match=f"^{photos}/gone.png: no such file"):
        run(model, paths, str(tmp_path / "stopped"))
    written = run(model, paths, str(tmp_path / "skipped"), skip_bad=True)
    assert written == [str(tmp_path / "skipped" / "a_good_overlay.png")]
    assert _warnings(capsys)[-2:] == [
        f"warning: skipped: {photos}/gone.png: no such file",
        "warning: skipped 1 of 2 images that could not be read (--skip-bad)"]


def test_outputs_in_the_way_and_clashing_names_are_refused_before_any_image_is_read(checkpoints, tmp_path):
    photos = _photos(tmp_path / "photos")
    (photos / "b_cut.png").unlink()
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (8, 8)).save(other / "a_good.jpg")
    for family in FAMILIES:
        out = tmp_path / f"out_{family}"
        with pytest.raises(SystemExit, match=f"^{photos}/a_good.png and {other}/a_good.jpg: both would write "
                                             rf"{out}/a_good_\w+\.png; rename one"):
            _predict(checkpoints, family, photos, other, "--out", out)
        assert not out.exists()
        out.mkdir()
        (out / "a_good_overlay.png").write_bytes(b"earlier")
        with pytest.raises(SystemExit, match=f"^{out}/a_good_overlay.png: exists already; pass --overwrite"):
            _predict(checkpoints, family, photos, "--out", out)
        assert (out / "a_good_overlay.png").read_bytes() == b"earlier"
        _predict(checkpoints, family, photos, "--out", out, "--overwrite")
        assert Image.open(out / "a_good_overlay.png").size == (32, 24)

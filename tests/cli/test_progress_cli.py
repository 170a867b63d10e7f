"""evaluate.py and predict.py show their progress in a log (stderr piped: one whole line per update shown, with the
count, the rate and the time left) and show none with --quiet."""
import numpy as np
import pytest
from PIL import Image
from progress_output import check_progress, progress_lines, run_piped

import evaluate
from cityscapes_fixtures import write_split
from data.samples.coco import write_coco_sample


@pytest.fixture(scope="module")
def pspnet_file(tmp_path_factory):
    from models import build_pspnet

    path = tmp_path_factory.mktemp("ckpt") / "pspnet.keras"
    build_pspnet(19, backbone="resnet18", base_width=8).save(path)
    return path


def test_evaluate_shows_progress_and_quiet_silences_it(pspnet_file, tmp_path):
    write_split(str(tmp_path / "data"), "val", num_images=3, size=(24, 32))
    args = ["evaluate.py", "--checkpoint", pspnet_file, "--data", tmp_path / "data", "--out", tmp_path / "eval"]
    status, stderr = run_piped(args)
    assert status == 0, stderr
    lines = check_progress(stderr, "evaluating", 3, "image")
    assert len(lines) == 2  # the first image, then (within 10 s) only the last
    status, stderr = run_piped(args + ["--overwrite", "--quiet"])
    assert status == 0, stderr
    assert progress_lines(stderr, "evaluating") == [] and "images/s" not in stderr and "s/image" not in stderr


def test_predict_shows_progress_and_quiet_silences_it(pspnet_file, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(photos / f"p{i}.png")
    status, stderr = run_piped(["predict.py", "--checkpoint", pspnet_file, photos, "--out", tmp_path / "out"])
    assert status == 0, stderr
    check_progress(stderr, "predicting", 2, "image")
    status, stderr = run_piped(["predict.py", "--checkpoint", pspnet_file, photos, "--out", tmp_path / "quiet",
                                "--quiet"])
    assert status == 0, stderr
    assert progress_lines(stderr, "predicting") == [] and "images/s" not in stderr and "s/image" not in stderr


def test_mask_rcnn_evaluation_shows_the_first_uses_conversion_and_the_images(tmp_path, capfd):
    """In-process (capfd's stderr is no terminal either): the split's first use converts it, then evaluates."""
    from models.mask_rcnn import build_mask_rcnn

    root = str(tmp_path / "coco")
    write_coco_sample(root, num_train=1, num_val=3, size=(48, 64), seed=0)
    checkpoint = str(tmp_path / "detector.keras")
    build_mask_rcnn(5, category_ids=(1, 3, 18, 44, 62), base_width=8, fpn_channels=16, mask_head_channels=8,
                    box_head_units=32).save(checkpoint)
    args = ["--model", "mask_rcnn", "--checkpoint", checkpoint, "--data", root, "--short-side", "48",
            "--long-side", "64"]
    evaluate.main(args + ["--out", str(tmp_path / "eval")])
    stderr = capfd.readouterr().err
    check_progress(stderr, "converting", 3, "image")
    check_progress(stderr, "evaluating", 3, "image")
    evaluate.main(args + ["--out", str(tmp_path / "eval"), "--overwrite", "--quiet", "--boxes", "gt"])
    assert progress_lines(capfd.readouterr().err, "evaluating") == []

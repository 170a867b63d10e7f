"""evaluate.py and models/pspnet/evaluation.py: scores against independent counts and against the official
cityscapesScripts evaluator."""
import json
import os
import zlib

import numpy as np
import pytest
import tensorflow as tf
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
from cityscapesscripts.helpers.labels import labels as official_labels

import evaluate
from data.normalization import INPUT_MEAN, INPUT_STD
from cityscapes_fixtures import official_train_ids, reference_scores, write_split
from data import cityscapes
from models.pspnet.evaluation import SegmentationScores, evaluate_pspnet

C = 19


def test_scores_equal_per_class_counts_over_several_images():
    rng = np.random.default_rng(0)
    scores = SegmentationScores(C)
    gts, preds = [], []
    for _ in range(3):
        gt = rng.integers(0, 12, size=(20, 30))  # classes 12..18 absent everywhere
        gt[rng.random(gt.shape) < 0.2] = 255
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 14, size=gt.shape))  # 12, 13: false positives only
        pred[pred == 255] = 0
        scores.update(gt, pred)
        gts.append(gt)
        preds.append(pred)
    iou, pixel_acc, class_acc = reference_scores(np.concatenate(gts), np.concatenate(preds), C)
    np.testing.assert_allclose(scores.per_class_iou(), iou, rtol=1e-12)
    assert np.isnan(scores.per_class_iou()[14:]).all() and scores.per_class_iou()[12] == 0.0
    assert scores.mean_iou() == pytest.approx(np.nanmean(iou), rel=1e-12)
    assert scores.pixel_accuracy() == pytest.approx(pixel_acc, rel=1e-12)
    assert scores.mean_class_accuracy() == pytest.approx(class_acc, rel=1e-12)


def test_hand_computed_two_class_case():
    scores = SegmentationScores(3)
    scores.update(np.array([0, 0, 1, 1, 255]), np.array([0, 1, 1, 1, 2]))
    # class 0: tp 1, fn 1 -> 1/2; class 1: tp 2, fp 1 -> 2/3; class 2 absent from both -> left out
    assert scores.mean_iou() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert scores.pixel_accuracy() == pytest.approx(3 / 4)


class NoisyOracle:
    """A stand-in segmentation model: logits from the ground truth hidden in the image, wrong on a known share.

    The image's first channel carries trainId * 10 (before normalisation); 30% of the pixels are
    shifted to another class, so the confusion matrix has real off-diagonal mass.
    """

    def __call__(self, images):
        raw = images[..., 0] * INPUT_STD[0] + INPUT_MEAN[0]
        train_ids = tf.clip_by_value(tf.cast(tf.round(raw / 10.0), tf.int32), 0, C - 1)
        return tf.one_hot(train_ids, C) * 5.0


def _hide_labels_in_images(root, split):
    for example in cityscapes.find_examples(root, split):
        from PIL import Image
        label_ids = np.array(Image.open(example.label_path))
        train_ids = cityscapes.to_train_ids(label_ids).astype(np.int64)
        rng = np.random.default_rng(zlib.crc32(example.id.encode()))
        wrong = rng.random(train_ids.shape) < 0.3
        shown = np.where(wrong, (train_ids + 3) % C, train_ids)
        shown[train_ids == 255] = rng.integers(0, C, size=int((train_ids == 255).sum()))
        image = np.zeros(label_ids.shape + (3,), np.uint8)
        image[..., 0] = (shown * 10).astype(np.uint8)
        Image.fromarray(image).save(example.image_path)


def test_metrics_and_files_equal_the_official_cityscapes_evaluator(tmp_path):
    root, out = str(tmp_path / "cityscapes"), str(tmp_path / "eval")
    write_split(root, "val", num_images=3)
    _hide_labels_in_images(root, "val")
    dataset = cityscapes.eval_pipeline(cityscapes.read_folder(root, "val"))
    metrics = evaluate_pspnet(NoisyOracle(), dataset, out)
    assert json.load(open(os.path.join(out, "metrics.json")))["mIoU"] == pytest.approx(metrics["mIoU"])
    assert os.path.exists(os.path.join(out, "confusion_matrix.png"))

    gts = sorted(str(p) for p in (tmp_path / "cityscapes" / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    preds = [os.path.join(out, os.path.basename(g).replace("_gtFine_labelIds", "_pred_labelIds")) for g in gts]
    args = official.args
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    results = official.evaluateImgLists(preds, gts, args)
    official_iou = {name: score for name, score in results["classScores"].items()}
    for name, ours in metrics["per_class_iou"].items():
        theirs = official_iou[name]
        assert (ours is None and np.isnan(theirs)) or ours == pytest.approx(theirs, abs=1e-12), name
    official_miou = np.nanmean([v for v in official_iou.values()])
    assert metrics["mIoU"] == pytest.approx(official_miou, abs=1e-12)
    assert 0.3 < metrics["mIoU"] < 0.9  # the stand-in is neither perfect nor useless
    # predictions are single-channel labelIds of evaluated classes
    from PIL import Image
    pred = np.array(Image.open(preds[0]))
    eval_ids = {label.id for label in official_labels if not label.ignoreInEval}
    assert pred.ndim == 2 and set(np.unique(pred)) <= eval_ids


def test_cli_on_a_checkpoint_writes_everything_and_refuses_to_overwrite(tmp_path):
    from models import build_pspnet

    root, out = str(tmp_path / "cityscapes"), str(tmp_path / "eval")
    written = write_split(root, "val", num_images=2)
    model = build_pspnet(C, backbone="resnet18", base_width=8)
    checkpoint = str(tmp_path / "tiny.keras")
    model.save(checkpoint)
    metrics = evaluate.main(["--checkpoint", checkpoint, "--data", root, "--split", "val", "--out", out,
                             "--sliding", "--crop", "32", "--flip"])
    # The score is that of the written predictions (counted here, trainIds from cityscapesScripts' table).
    from PIL import Image
    train_id = official_train_ids(C)
    gt = np.concatenate([train_id[ids].ravel() for _, ids in written])
    pred = np.concatenate([train_id[np.array(Image.open(os.path.join(out, f"{i}_pred_labelIds.png")))].ravel()
                           for i, _ in written])
    ious, _, _ = reference_scores(gt, pred, C)
    assert metrics["mIoU"] == pytest.approx(np.nanmean(ious), abs=1e-9)
    class_names = [label.name for label in sorted(official_labels, key=lambda label: label.trainId)
                   if 0 <= label.trainId < C]
    assert list(metrics["per_class_iou"]) == class_names
    np.testing.assert_allclose([np.nan if v is None else v for v in metrics["per_class_iou"].values()], ious,
                               rtol=1e-12)  # NaN (absent class) only where the counts have none
    names = os.listdir(out)
    assert sum(n.endswith("_pred_labelIds.png") for n in names) == 2
    assert sorted(os.listdir(os.path.join(out, "color"))) == sorted(
        "color_" + n.replace("_pred_labelIds", "") for n in names if n.endswith("_pred_labelIds.png"))
    with pytest.raises(SystemExit, match="--overwrite"):
        evaluate.main(["--checkpoint", checkpoint, "--data", root, "--out", out])
    with pytest.raises(SystemExit, match="no such file"):
        evaluate.main(["--checkpoint", str(tmp_path / "missing.keras"), "--data", root, "--out", out, "--overwrite"])
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(SystemExit, match="broken.keras: not a .keras file"):
        evaluate.main(["--checkpoint", str(tmp_path / "broken.keras"), "--data", root, "--out", out, "--overwrite"])

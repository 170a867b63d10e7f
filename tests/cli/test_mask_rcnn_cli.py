"""train.py / evaluate.py / predict.py --model mask_rcnn: short real runs of the detector on a tiny COCO-format sample.

The written JSON files are read back with pycocotools (loadRes, COCOeval,
mask.decode): the independent reader every COCO tool uses.
"""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import evaluate
import predict
import train
from data.samples.coco import write_coco_sample
from models.mask_rcnn.loading import load_detector
from models.mask_rcnn.trainer import METRIC_NAMES
from train_processes import run_train, steps_done, two_worker_envs

TINY = ["--base-width", "8", "--fpn-channels", "16", "--mask-head-channels", "8", "--box-head-units", "32",
        "--rpn-pre-nms-top-n", "200", "--rpn-post-nms-top-n", "100", "--box-batch-size", "32",
        "--short-side", "96", "--long-side", "128", "--batch-size", "2", "--steps-per-epoch", "1",
        "--milestones", "3", "--warmup-steps", "1", "--verbose", "0"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("coco"))
    write_coco_sample(path, num_train=4, num_val=2, size=(96, 128), seed=0)
    return path


def _train(root, run, *extra):
    return train.main(["--model", "mask_rcnn", "--preset", "maskrcnn_r50_fpn_1x_coco", "--stage", "heads",
                       "--data", root, "--out", run] + TINY + list(extra))


def _scored_again(gt, results_path, iou_type):
    """COCOeval's stats of a results file as pycocotools reads it (loadRes on the path)."""
    evaluator = COCOeval(gt, gt.loadRes(results_path), iouType=iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats


def _detector_file(path, background_logit):
    """A tiny untrained detector whose background logit is fixed: -50 detects (nearly) everywhere, 50 nowhere."""
    from models.mask_rcnn import build_mask_rcnn

    detector = build_mask_rcnn(5, category_ids=(1, 3, 18, 44, 62), base_width=8, fpn_channels=16,
                               mask_head_channels=8, box_head_units=32)
    # Logits = the bias alone (a zero kernel), whatever the random features.
    classifier = detector.get_layer("box_head").class_logits
    classifier.kernel.assign(np.zeros(classifier.kernel.shape, np.float32))
    classifier.bias.assign(np.array([background_logit] + [0.0] * 5, np.float32))
    detector.save(path)
    return path


@pytest.mark.slow
def test_train_resume_then_evaluate_the_run_both_ways(root, tmp_path):
    run = str(tmp_path / "run")
    assert _train(root, run, "--steps", "2") == 0
    assert json.load(open(os.path.join(run, "state.json")))["steps_done"] == 2
    assert _train(root, run, "--steps", "3", "--resume") == 0
    assert json.load(open(os.path.join(run, "state.json")))["steps_done"] == 3
    history = open(os.path.join(run, "history.csv")).read().splitlines()
    assert len(history) == 4 and "rpn_objectness_loss" in history[0] and "val_mask_loss" in history[0]
    assert os.path.exists(os.path.join(run, "curves.png"))
    checkpoint = os.path.join(run, "last.keras")

    out = str(tmp_path / "eval")
    metrics = evaluate.main(["--model", "mask_rcnn", "--checkpoint", checkpoint, "--data", root, "--out", out])
    assert {"bbox_AP", "bbox_AR100", "segm_AP", "segm_APl"} <= set(metrics) and metrics["images"] == 2
    assert all(os.path.exists(os.path.join(out, f)) for f in ("bbox_results.json", "segm_results.json"))

    oracle = evaluate.main(["--model", "mask_rcnn", "--boxes", "gt", "--checkpoint", checkpoint, "--data", root,
                            "--out", str(tmp_path / "oracle")])
    gt = COCO(os.path.join(root, "annotations", "instances_val2017.json"))
    assert len(json.load(open(os.path.join(tmp_path, "oracle", "segm_results.json")))) == len(gt.getAnnIds(iscrowd=False))
    assert -1.0 <= oracle["segm_AP"] <= 1.0


@pytest.mark.slow
def test_evaluate_and_predict_write_what_pycocotools_reads(root, tmp_path):
    checkpoint = _detector_file(str(tmp_path / "eager.keras"), -50.0)
    out = str(tmp_path / "eval")
    metrics = evaluate.main(["--model", "mask_rcnn", "--checkpoint", checkpoint, "--data", root, "--out", out,
                             "--short-side", "96", "--long-side", "128"])
    gt = COCO(os.path.join(root, "annotations", "instances_val2017.json"))
    for iou_type in ("bbox", "segm"):
        path = os.path.join(out, f"{iou_type}_results.json")
        results = json.load(open(path))
        assert results and {r["category_id"] for r in results} <= set(gt.getCatIds())  # original COCO ids
        assert all(("bbox" in r) == (iou_type == "bbox") for r in results)
        np.testing.assert_allclose([metrics[f"{iou_type}_{name}"] for name in ("AP", "AP50", "AR100")],
                                   _scored_again(gt, path, iou_type)[[0, 1, 8]])

    blank = str(tmp_path / "blank.png")
    Image.new("RGB", (70, 50), (90, 90, 90)).save(blank)
    val_images = os.path.join(root, "val2017")
    pred = str(tmp_path / "pred")
    written = predict.main(["--model", "mask_rcnn", "--checkpoint", checkpoint, val_images, blank, "--out", pred,
                            "--score-threshold", "0", "--short-side", "96", "--long-side", "128"])
    assert len(written) == 3 and Image.open(written[-1]).size == (70, 50)
    detections = json.load(open(os.path.join(pred, "detections.json")))
    assert detections and {d["file_name"] for d in detections} <= {"blank.png"} | set(os.listdir(val_images))
    for d in detections:
        height, width = mask_utils.decode(d["segmentation"]).shape
        assert (d["image_id"] == 3) == ((height, width) == (50, 70))
        assert len(d["bbox"]) == 4 and 0 <= d["score"] <= 1 and d["category_id"] in (1, 3, 18, 44, 62)
    with pytest.raises(SystemExit, match="--overwrite"):
        predict.main(["--model", "mask_rcnn", "--checkpoint", checkpoint, blank, "--out", pred])


@pytest.mark.slow
def test_a_model_that_sees_no_object_writes_empty_results_and_plain_overlays(root, tmp_path):
    """No detection anywhere (background logit far ahead): empty JSON, zero AP, the image unchanged in its overlay."""
    checkpoint = _detector_file(str(tmp_path / "never.keras"), 50.0)
    metrics = evaluate.main(["--model", "mask_rcnn", "--checkpoint", checkpoint, "--data", root,
                             "--out", str(tmp_path / "eval"), "--short-side", "96", "--long-side", "128"])
    assert metrics["detections"] == 0 and metrics["segm_AP"] == 0.0 and metrics["bbox_AP"] == 0.0
    assert json.load(open(os.path.join(tmp_path, "eval", "segm_results.json"))) == []

    blank = str(tmp_path / "blank.png")
    pixels = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(blank)
    written = predict.main(["--model", "mask_rcnn", "--checkpoint", checkpoint, blank, "--out", str(tmp_path / "p"),
                            "--score-threshold", "0"])
    np.testing.assert_array_equal(np.asarray(Image.open(written[0])), pixels)
    assert json.load(open(os.path.join(tmp_path, "p", "detections.json"))) == []


def test_bad_stage_and_mask_rois_are_refused_in_one_line(root, tmp_path):
    with pytest.raises(SystemExit, match="--stage 'full' is not one of heads, mask_head, all"):
        _train(root, str(tmp_path / "run"), "--stage", "full")
    with pytest.raises(SystemExit, match="--mask-rois"):
        _train(root, str(tmp_path / "run"), "--stage", "mask_head", "--mask-rois", "boxes")
    with pytest.raises(SystemExit, match="--init-from"):
        _train(root, str(tmp_path / "run"), "--init-from", str(tmp_path / "missing.keras"))
    with pytest.raises(SystemExit, match="--jit-compile: the detector's NMS and input resize have no XLA kernels"):
        _train(root, str(tmp_path / "run"), "--jit-compile")
    assert not os.path.exists(str(tmp_path / "run"))  # refused before the run folder exists


@pytest.mark.slow
def test_two_process_multi_worker_run_trains_and_resumes_every_worker_at_the_chief_step(root, tmp_path):
    """train.py --model mask_rcnn --strategy multiworker: two workers on 127.0.0.1, each reading its own half
    of the records (input_context); only the chief writes; a second command resumes both at the chief's step."""
    out, other_out = str(tmp_path / "multiworker"), str(tmp_path / "worker1")
    envs = two_worker_envs()

    def run_workers(steps):
        procs = [run_train(["--model", "mask_rcnn", "--preset", "maskrcnn_r50_fpn_1x_coco", "--stage", "all",
                            "--data", root, "--out", out if index == 0 else other_out, "--steps", str(steps),
                            "--strategy", "multiworker", "--resume"] + TINY[:-2] + ["--verbose", "1"], env=env)
                 for index, env in enumerate(envs)]
        outputs = [p.communicate(timeout=600)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outputs
        return outputs

    run_workers(2)
    assert steps_done(out) == 2
    outputs = run_workers(3)
    assert "worker chief: starting at step 2" in outputs[0], outputs[0]
    assert "worker other: starting at step 2" in outputs[1], outputs[1]  # its own --out is empty
    assert steps_done(out) == 3 and not os.path.exists(os.path.join(other_out, "last.keras"))
    history = list(csv.DictReader(open(os.path.join(out, "history.csv"))))
    assert len(history) == 3 and all(np.isfinite(float(row["mask_loss"])) for row in history)
    assert set(METRIC_NAMES) <= set(history[0])
    load_detector(os.path.join(out, "last.keras"))  # the chief's checkpoint is a detector evaluate.py reads

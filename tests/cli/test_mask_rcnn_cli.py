"""train.py / evaluate.py --model mask_rcnn: a short real run on a tiny COCO-format sample."""
import json
import os

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import evaluate
import train
from data.synthetic_coco import write_coco_sample

TINY = ["--depth", "18", "--base-width", "16", "--fpn-channels", "32", "--head-channels", "32", "--fc-units", "64",
        "--short-side", "128", "--long-side", "160", "--batch-size", "2", "--num-rois", "8", "--steps", "4",
        "--steps-per-epoch", "2", "--milestones", "3", "--warmup-steps", "1", "--verbose", "0"]


@pytest.mark.slow
def test_train_then_oracle_box_evaluation(tmp_path):
    root, run = str(tmp_path / "coco"), str(tmp_path / "run")
    write_coco_sample(root, num_train=4, num_val=2, size=(128, 160), seed=0)
    assert train.main(["--model", "mask_rcnn", "--preset", "maskrcnn_r50_fpn_mask_head_coco", "--data", root,
                       "--out", run] + TINY) == 0
    state = json.load(open(os.path.join(run, "state.json")))
    assert state["epochs_done"] == 2 and state["steps_done"] == 4
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["short_side"] == 128 and config["milestones"] == [3]

    out = str(tmp_path / "eval")
    metrics = evaluate.main(["--model", "mask_rcnn", "--boxes", "gt", "--checkpoint", os.path.join(run, "last.keras"),
                             "--data", root, "--split", "val", "--out", out])
    assert {"segm_AP", "segm_AP50", "segm_AP75"} <= set(metrics)
    gt = COCO(os.path.join(root, "annotations", "instances_val2017.json"))
    # The reported AP is pycocotools' on the written results file.
    evaluation = COCOeval(gt, gt.loadRes(os.path.join(out, "segm_results.json")), "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert metrics["segm_AP"] == pytest.approx(evaluation.stats[0], abs=1e-12)
    # Four steps are too few to pick classes (AP 0 with predicted ones), not to place masks: with the true
    # classes this run measured AP 0.26, AP50 0.56; misplaced or mis-scaled masks score near 0.
    true_classes = evaluate.main(["--model", "mask_rcnn", "--class-source", "ground_truth", "--checkpoint",
                                  os.path.join(run, "last.keras"), "--data", root, "--split", "val",
                                  "--out", str(tmp_path / "eval_true_classes")])
    assert true_classes["segm_AP50"] > 0.3 and true_classes["segm_AP"] > 0.1, true_classes
    results = gt.loadRes(os.path.join(out, "segm_results.json"))
    assert results.getAnnIds() and all("bbox" not in r for r in json.load(open(os.path.join(out, "segm_results.json"))))
    assert {a["category_id"] for a in results.anns.values()} <= set(gt.getCatIds())  # original COCO ids
    with pytest.raises(SystemExit, match="--overwrite"):
        evaluate.main(["--model", "mask_rcnn", "--checkpoint", os.path.join(run, "last.keras"), "--data", root,
                       "--out", out])


def test_only_the_mask_head_stage_exists_yet(tmp_path):
    with pytest.raises(SystemExit, match="--stage"):
        train.main(["--model", "mask_rcnn", "--stage", "full", "--data", str(tmp_path), "--out",
                    str(tmp_path / "run")] + TINY)

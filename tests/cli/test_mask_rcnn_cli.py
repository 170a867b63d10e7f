"""train.py / evaluate.py --model mask_rcnn: a short real run on a tiny COCO-format sample."""
import json
import os

import pytest
from pycocotools.coco import COCO

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
    assert {"segm_AP", "segm_AP50", "segm_AP75"} <= set(metrics) and -1.0 <= metrics["segm_AP"] <= 1.0
    gt = COCO(os.path.join(root, "annotations", "instances_val2017.json"))
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

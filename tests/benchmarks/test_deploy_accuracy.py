"""benchmarks.deploy_accuracy's scoring of a served detector: its outputs (boxes x1, y1, x2, y2, dataset category
ids, masks) through detect_file and coco_metrics, checked with a stand-in that serves the ground truth itself."""
import os

import numpy as np
import pytest
from pycocotools.coco import COCO

from benchmarks.deploy_accuracy import coco_metrics, detect_file
from data.samples.coco import write_coco_sample

SETTINGS = {"box_decimals": 2, "scored_images": "all"}  # evaluate.py's rules for a run's own checkpoint


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco"))
    write_coco_sample(root, num_train=1, num_val=4, size=(96, 128), seed=0)
    return root, COCO(os.path.join(root, "annotations", "instances_val2017.json"))


def _served_ground_truth(coco, image_id, *, swap_axes=False):
    """A runner giving the image's objects as the exported detector gives detections (scores decreasing)."""
    annotations = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)], np.float32)
    if swap_axes:
        boxes = boxes[:, [1, 0, 3, 2]]
    outputs = {"boxes": boxes.reshape(-1, 4), "class_ids": np.array([a["category_id"] for a in annotations], np.int32),
               "scores": np.linspace(0.9, 0.5, len(annotations)).astype(np.float32),
               "masks": np.array([coco.annToMask(a) for a in annotations], np.uint8),
               "num_detections": np.int32(len(annotations))}
    seen = []

    def runner(image, score_threshold):
        assert image.shape[:2] == outputs["masks"].shape[1:] and image.dtype == np.uint8
        seen.append(score_threshold)
        return outputs

    return runner, seen


def _metrics(root, coco, **options):
    predictions = []
    for image_id, info in sorted(coco.imgs.items()):
        runner, seen = _served_ground_truth(coco, image_id, swap_axes=options.get("swap_axes", False))
        found = detect_file(runner, os.path.join(root, "val2017", info["file_name"]), 0.05,
                            options.get("detections_per_image", 100))
        assert seen == [0.05]
        predictions.append({"image_id": image_id, **found})
    return coco_metrics(coco, predictions, SETTINGS)


def test_the_ground_truth_served_scores_perfectly(sample):
    metrics = _metrics(*sample)
    assert metrics["bbox_AP"] == pytest.approx(1.0) and metrics["segm_AP"] == pytest.approx(1.0)


def test_boxes_in_the_wrong_order_or_detections_cut_lower_the_ap(sample):
    swapped = _metrics(*sample, swap_axes=True)  # the check above would miss a box-order mistake otherwise
    assert swapped["bbox_AP"] < 0.5 and swapped["segm_AP"] == pytest.approx(1.0)
    one_each = _metrics(*sample, detections_per_image=1)
    assert one_each["segm_AR100"] < 0.9

"""evaluate.py --model mask_rcnn on a converted torchvision model against torchvision's own COCO evaluation.

Reference: torchvision's references/detection evaluation written out here step
by step: engine.evaluate (model.eval(), batch size 1, images as
CocoDetection reads them: Pillow, RGB, to_tensor in [0, 1]; the model's own
transform resizes to 800 / 1333; box_score_thresh 0.05,
box_detections_per_img 100), coco_eval.CocoEvaluator.prepare_for_coco_detection
/ prepare_for_coco_segmentation (labels as category ids, float32 boxes as
x, y, w, h unrounded, masks `> 0.5` encoded with pycocotools), and COCOeval
over the images run (params.imgIds). The model is torchvision's
maskrcnn_resnet50_fpn with randomised weights (torchvision_maskrcnn.py), the
file ours reads is what models.convert writes from the same state dict; the
images are the built-in COCO sample's val split (256 x 320, resized up to
800 x 1000 as torchvision does). Random weights find none of the sample's
shapes (AP 0 everywhere, which would compare nothing), so the ground truth
scored against is made from torchvision's own detections: every third one
per image, its box moved by a few pixels and every other mask shifted by one pixel
(derived_ground_truth), which gives AP and AR between 0 and 1.
"""
import copy
import json
import os

import torch  # noqa: I001  (torch and torchvision before TensorFlow: TF_KERAS_NOTES.md)
import torchvision  # noqa: F401
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from data.coco.results import STAT_NAMES
from data.samples.coco import write_coco_sample
from models.convert import convert_checkpoint
from models.convert.torchvision import COCO_CATEGORIES
from models.mask_rcnn.evaluation import evaluate_on_coco
from tests.models.mask_rcnn.torchvision_maskrcnn import randomised_maskrcnn

NUM_VAL = 3


def _reference_results(model, coco_gt, image_dir):
    """torchvision's engine.evaluate + CocoEvaluator on every image of coco_gt: (bbox results, segm results, the
    pasted mask probabilities [H, W] of each segm result)."""
    bbox, segm, probabilities = [], [], []
    with torch.no_grad():
        for image_id in sorted(coco_gt.getImgIds()):
            info = coco_gt.loadImgs(image_id)[0]
            with Image.open(os.path.join(image_dir, info["file_name"])) as image:
                tensor = torchvision.transforms.functional.to_tensor(image.convert("RGB"))
            output = model([tensor])[0]
            # prepare_for_coco_detection: convert_to_xywh in float32, then tolist().
            x1, y1, x2, y2 = output["boxes"].unbind(1)
            boxes = torch.stack((x1, y1, x2 - x1, y2 - y1), dim=1).tolist()
            scores, labels = output["scores"].tolist(), output["labels"].tolist()
            bbox += [{"image_id": image_id, "category_id": labels[k], "bbox": box, "score": scores[k]}
                     for k, box in enumerate(boxes)]
            # prepare_for_coco_segmentation: masks > 0.5, one RLE per mask, counts as str.
            probabilities += list(output["masks"][:, 0].numpy())
            masks = output["masks"] > 0.5
            rles = [mask_utils.encode(np.array(mask[0, :, :, np.newaxis], dtype=np.uint8, order="F"))[0]
                    for mask in masks]
            for rle in rles:
                rle["counts"] = rle["counts"].decode("utf-8")
            segm += [{"image_id": image_id, "category_id": labels[k], "segmentation": rle, "score": scores[k]}
                     for k, rle in enumerate(rles)]
    return bbox, segm, probabilities


def _reference_stats(coco_gt, results, iou_type, image_ids=None):
    """CocoEvaluator's COCOeval: loadRes on (copies of) the results, params.imgIds = the images run (default all)."""
    coco_dt = COCO.loadRes(coco_gt, copy.deepcopy(results))
    evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
    evaluator.params.imgIds = sorted(coco_gt.getImgIds()) if image_ids is None else list(image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return np.array(evaluator.stats)


def derived_ground_truth(coco_gt, bbox, segm, seed=0):
    """A COCO annotation document for coco_gt's images whose objects are every third detection of each image
    with a mask of 50 pixels or more
    (bbox results and segm results in the same order), boxes moved by ~2 px, every other mask shifted by 1 px."""
    rng = np.random.default_rng(seed)
    annotations = []
    for image_id in sorted(coco_gt.getImgIds()):
        found = [k for k, r in enumerate(bbox) if r["image_id"] == image_id]
        for n, k in enumerate(k for k in found[::3] if mask_utils.area(segm[k]["segmentation"]) >= 50):
            mask = np.roll(mask_utils.decode(segm[k]["segmentation"]), (n % 2, -(n % 2)), axis=(0, 1))
            if not mask.any():
                continue
            rle = mask_utils.encode(np.asfortranarray(mask))
            x, y, w, h = (np.array(bbox[k]["bbox"]) + rng.normal(0, 2, 4)).tolist()
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": bbox[k]["category_id"],
                                "bbox": [x, y, max(w, 1.0), max(h, 1.0)], "area": float(mask_utils.area(rle)),
                                "iscrowd": 0, "segmentation": {"size": rle["size"],
                                                               "counts": rle["counts"].decode("ascii")}})
    return {"images": coco_gt.loadImgs(sorted(coco_gt.getImgIds())), "annotations": annotations,
            "categories": [{"id": i, "name": name, "supercategory": ""} for i, name in COCO_CATEGORIES]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("torchvision_evaluation")
    root = str(folder / "coco")
    write_coco_sample(root, num_train=1, num_val=NUM_VAL, size=(256, 320), seed=0)
    coco_gt = COCO(os.path.join(root, "annotations", "instances_val2017.json"))
    first = coco_gt.loadImgs(sorted(coco_gt.getImgIds())[0])[0]["file_name"]
    with Image.open(os.path.join(root, "val2017", first)) as image:
        calibration = np.asarray(image.convert("RGB"))
    model = randomised_maskrcnn(calibration)  # torchvision's defaults: 800 / 1333, 0.05, 100 detections
    with torch.no_grad():
        # Mask logits 20 times larger: probabilities far from 0.5 (as trained weights give) except where dead
        # ReLUs leave a logit of exactly 0 (bias 0), the 0.5 plateaus where `> 0.5` and `>= 0.5` differ.
        model.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(20.0)
    torch.save(model.state_dict(), folder / "maskrcnn.pth")
    checkpoint = str(folder / "maskrcnn.keras")
    convert_checkpoint("torchvision-maskrcnn", str(folder / "maskrcnn.pth"), checkpoint, check_hash=False)
    bbox, segm, probabilities = _reference_results(model, coco_gt, os.path.join(root, "val2017"))
    annotation_file = os.path.join(root, "annotations", "instances_val2017.json")
    with open(annotation_file, "w") as f:
        json.dump(derived_ground_truth(coco_gt, bbox, segm), f)
    coco_gt = COCO(annotation_file)
    out = str(folder / "eval")
    metrics = evaluate_on_coco(checkpoint, root, out, split="val")
    with open(os.path.join(out, "bbox_results.json")) as f:
        ours_bbox = json.load(f)
    with open(os.path.join(out, "segm_results.json")) as f:
        ours_segm = json.load(f)
    return {"root": root, "coco_gt": coco_gt, "checkpoint": checkpoint, "bbox": bbox, "segm": segm,
            "probabilities": probabilities,
            "metrics": metrics, "ours_bbox": ours_bbox, "ours_segm": ours_segm, "out": out}


def _pairs(ours, reference, box_atol=1e-2, score_atol=1e-4):
    """Index of our result for each reference one: same image and category, box within box_atol px, score
    within score_atol (scores a few 1e-6 apart may come in either order, so pairs are not by position)."""
    assert len(ours) == len(reference)
    keys = np.array([(r["image_id"], r["category_id"]) for r in ours])
    boxes, scores = np.array([r["bbox"] for r in ours]), np.array([r["score"] for r in ours])
    order = []
    for r in reference:
        candidates = np.flatnonzero((keys == (r["image_id"], r["category_id"])).all(axis=1)
                                    & (np.abs(scores - r["score"]) <= score_atol))
        assert len(candidates), r
        distance = np.abs(boxes[candidates] - r["bbox"]).max(axis=1)
        assert distance.min() <= box_atol, (r, boxes[candidates])
        order.append(candidates[np.argmin(distance)])
    assert sorted(order) == list(range(len(ours)))  # a one-to-one pairing
    return np.array(order)


def test_converted_model_takes_torchvision_settings(setup):
    settings = setup["metrics"]["settings"]
    assert settings["defaults"] == "torchvision"
    assert (settings["short_side"], settings["long_side"]) == (800, 1333)
    assert (settings["mask_rule"], settings["score_threshold"], settings["detections_per_image"]) == ("above", 0.05,
                                                                                                      100)
    assert settings["box_decimals"] is None and settings["scored_images"] == "evaluated"
    with open(os.path.join(setup["out"], "metrics.json")) as f:
        assert json.load(f)["settings"] == settings


def test_bbox_results_match_detection_for_detection(setup):
    reference, ours = setup["bbox"], setup["ours_bbox"]
    assert len(reference) >= 50 * NUM_VAL  # the randomised model detects plenty above 0.05
    order = _pairs(ours, reference)
    np.testing.assert_allclose([ours[i]["bbox"] for i in order], [r["bbox"] for r in reference], atol=1e-2)
    # As coco_eval.py writes them: float32 x, y, w, h (w = x2 - x1 in float32), not rounded (measured: boxes
    # within 5e-3 px of torchvision's, so rounding to 0.01 px would pass the line above).
    values = np.array([r["bbox"] for r in ours], np.float64)
    np.testing.assert_array_equal(values.astype(np.float32), values)
    assert np.mean(np.round(values, 2) != values) > 0.9
    np.testing.assert_allclose([ours[i]["score"] for i in order], [r["score"] for r in reference], atol=1e-4)


def _mask_comparison(setup, ours_bbox, ours_segm):
    """Our segm results against torchvision's, for the images ours has: (RLEs equal, masks compared, pixels
    differing, of which torchvision's probability is within 5e-3 of 0.5, torchvision's pixels at exactly 0.5, of
    which ours keeps)."""
    images = {r["image_id"] for r in ours_bbox}
    kept = [k for k, r in enumerate(setup["bbox"]) if r["image_id"] in images]
    order = _pairs(ours_bbox, [setup["bbox"][k] for k in kept])
    equal, differing, near, half, half_on = 0, 0, 0, 0, 0
    for k, i in zip(kept, order):
        r, probability = setup["segm"][k], setup["probabilities"][k]
        assert (ours_segm[i]["image_id"], ours_segm[i]["category_id"]) == (r["image_id"], r["category_id"])
        expected = mask_utils.decode(r["segmentation"]).astype(bool)
        found = mask_utils.decode(ours_segm[i]["segmentation"]).astype(bool)
        equal += ours_segm[i]["segmentation"] == r["segmentation"]
        differing += (expected != found).sum()
        near += (np.abs(probability[expected != found] - 0.5) <= 5e-3).sum()
        half += (probability == 0.5).sum()
        half_on += found[probability == 0.5].sum()
    return equal, len(kept), differing, near, half, half_on


def test_segm_results_match_mask_for_mask(setup):
    equal, count, differing, near, half, half_on = _mask_comparison(setup, setup["ours_bbox"], setup["ours_segm"])
    # Mask probabilities differ by up to ~2e-3 (our transform's input differs by ~1e-5, the logits are scaled
    # up): a pixel may differ only where torchvision's is that close to 0.5. Pixels at exactly 0.5 (zero logits)
    # are off in both, but where a box edge 1e-3 px away gives a plateau pixel a sliver of a neighbour's weight.
    # Measured: 263 of 300 RLEs equal, 299 pixels differing, 131 of 3243 pixels at 0.5 on.
    assert equal >= 0.8 * count, (equal, count)
    assert near == differing, (near, differing)
    assert half > 1000 and half_on <= 0.1 * half, (half, half_on)


def test_mask_rule_at_least_keeps_the_pixels_at_exactly_one_half(setup, tmp_path):
    """--mask-rule at_least (this project's own runs' rule): the pixels at exactly 0.5 are on, unlike torchvision's.
    Also --max-images 1 with the converted model's scored_images="evaluated": COCOeval scores that image only."""
    metrics = evaluate_on_coco(setup["checkpoint"], setup["root"], str(tmp_path), split="val", mask_rule="at_least",
                               max_images=1)
    with open(tmp_path / "bbox_results.json") as f:
        ours_bbox = json.load(f)
    with open(tmp_path / "segm_results.json") as f:
        ours_segm = json.load(f)
    equal, count, differing, near, half, half_on = _mask_comparison(setup, ours_bbox, ours_segm)
    assert len({r["image_id"] for r in ours_bbox}) == 1 and count >= 50
    # Measured: 1410 of 1498 (the rest: box edges ~1e-3 px from torchvision's, as above, leave them under 0.5).
    assert half > 100 and half_on >= 0.9 * half, (half, half_on)
    assert equal < 0.8 * count
    first = min(setup["coco_gt"].getImgIds())
    expected = _reference_stats(setup["coco_gt"], [r for r in setup["bbox"] if r["image_id"] == first], "bbox",
                                image_ids=[first])
    np.testing.assert_allclose([metrics[f"bbox_{name}"] for name in STAT_NAMES], expected, atol=1e-4)


def test_coco_metrics_agree(setup):
    coco_gt, metrics = setup["coco_gt"], setup["metrics"]
    for iou_type in ("bbox", "segm"):
        expected = _reference_stats(coco_gt, setup[iou_type], iou_type)
        ours = np.array([metrics[f"{iou_type}_{name}"] for name in STAT_NAMES])
        assert 0.05 < expected[0] < 0.95 and 0.05 < expected[8] < 0.95, expected  # AP, AR100 neither 0 nor 1
        np.testing.assert_allclose(ours, expected, atol=1e-4, err_msg=iou_type)


def test_a_file_without_torchvision_provenance_keeps_this_projects_settings(setup, tmp_path):
    """The same weights without the provenance entry models.convert writes: a run's checkpoint, its own rules."""
    import zipfile

    from data.errors import UsageError
    from models.keras_files import PROVENANCE_ENTRY
    from models.mask_rcnn.evaluation import coco_settings
    from models.mask_rcnn.loading import load_detector

    plain = str(tmp_path / "plain.keras")
    with zipfile.ZipFile(setup["checkpoint"]) as source, zipfile.ZipFile(plain, "w") as target:
        assert PROVENANCE_ENTRY in source.namelist()
        for item in source.infolist():
            if item.filename != PROVENANCE_ENTRY:
                target.writestr(item, source.read(item.filename))
    detector = load_detector(plain)
    assert coco_settings(plain, detector) == {
        "short_side": 800, "long_side": 1333, "mask_rule": "at_least", "score_threshold": 0.05,
        "detections_per_image": 100, "box_decimals": 2, "scored_images": "all", "defaults": "project"}
    given = coco_settings(setup["checkpoint"], detector, mask_rule="at_least", score_threshold=0.3,
                          detections_per_image=10, box_decimals="none", scored_images="all", short_side=600)
    assert given == {"short_side": 600, "long_side": 1333, "mask_rule": "at_least", "score_threshold": 0.3,
                     "detections_per_image": 10, "box_decimals": None, "scored_images": "all",
                     "defaults": "torchvision"}
    with pytest.raises(UsageError, match=r"^--score-threshold 0.01: below the threshold built into .* \(0.05\)"):
        coco_settings(plain, detector, score_threshold=0.01)
    with pytest.raises(UsageError, match=r"^--detections-per-image 101: .* returns at most 100 detections"):
        coco_settings(plain, detector, detections_per_image=101)


def test_fewer_detections_and_a_higher_score_threshold_keep_torchvisions_best(setup, tmp_path):
    """--score-threshold 0.1 --detections-per-image 20 --box-decimals 2, through evaluate.py: as torchvision's
    box_score_thresh=0.1 and box_detections_per_img=20 would keep (scores > 0.1, each image's 20 best)."""
    import evaluate

    out = str(tmp_path / "eval")
    metrics = evaluate.main(["--model", "mask_rcnn", "--checkpoint", setup["checkpoint"], "--data", setup["root"],
                             "--out", out, "--score-threshold", "0.1", "--detections-per-image", "20",
                             "--box-decimals", "2", "--quiet"])
    assert metrics["settings"]["score_threshold"] == 0.1 and metrics["settings"]["box_decimals"] == 2
    with open(os.path.join(out, "bbox_results.json")) as f:
        ours = json.load(f)
    expected = []
    for image_id in sorted(setup["coco_gt"].getImgIds()):
        found = [r for r in setup["bbox"] if r["image_id"] == image_id and r["score"] > 0.1]
        expected += sorted(found, key=lambda r: -r["score"])[:20]
    assert 20 < len(expected) < 20 * NUM_VAL + 1
    order = _pairs(ours, expected)
    assert all(round(v, 2) == v for i in order for v in ours[i]["bbox"])


@pytest.mark.parametrize("flags, message", [
    (["--score-threshold", "1.5"], "--score-threshold must lie in [0, 1], got 1.5"),
    (["--detections-per-image", "0"], "--detections-per-image must be positive, got 0"),
    (["--box-decimals", "two"], "--box-decimals takes a number of decimals (0 or more) or 'none', got 'two'"),
])
def test_evaluate_flags_for_the_coco_settings(tmp_path, flags, message):
    import evaluate

    with pytest.raises(SystemExit) as error:
        evaluate.main(["--model", "mask_rcnn", "--checkpoint", "unused.keras", "--data", str(tmp_path), "--out",
                       str(tmp_path / "../o"), *flags])
    assert str(error.value) == message


def test_paste_above_one_half_is_torchvisions_masks_above_one_half():
    """paste_masks(torchvision_compatible=True, above=True) against torchvision's paste_masks_in_image, then `> 0.5`
    as coco_eval.py thresholds, on masks with plateaus of exactly 0.5 (zero logits) beside random values."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from models.mask_rcnn.paste import paste_masks

    rng = np.random.default_rng(0)
    logits = np.where(rng.random((20, 28, 28)) < 0.5, 0.0, rng.normal(0, 3, (20, 28, 28)))
    masks = torch.sigmoid(torch.from_numpy(logits).float())
    x1, y1 = rng.uniform(0, 150, 20), rng.uniform(0, 100, 20)
    boxes = np.stack([x1, y1, x1 + rng.uniform(5, 120, 20), y1 + rng.uniform(5, 90, 20)], axis=1).astype(np.float32)
    probability = paste_masks_in_image(masks[:, None], torch.from_numpy(boxes), (160, 200), padding=1)[:, 0].numpy()
    ours = paste_masks(masks.numpy(), boxes[:, [1, 0, 3, 2]], (160, 200), torchvision_compatible=True,
                       above=True).dense()
    at_half = probability == 0.5
    assert at_half.sum() > 1000 and not ours[at_half].any()
    differing = ours != (probability > 0.5)
    assert np.all(np.abs(probability[differing] - 0.5) < 1e-5), probability[differing]
    at_least = paste_masks(masks.numpy(), boxes[:, [1, 0, 3, 2]], (160, 200), torchvision_compatible=True).dense()
    assert at_least[at_half].all()  # the >= rule keeps them all

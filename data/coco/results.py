"""COCO results: bbox and segm results JSON from predictions, and their AP with pycocotools' COCOeval."""
import contextlib
import io
import json

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

# COCOeval.stats in its order (summarize()'s twelve lines), without the iou type prefix.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
SEGM_METRICS = tuple(f"segm_{name}" for name in STAT_NAMES[:6])


def bbox_results(predictions, categories, *, decimals=2):
    """COCO bbox results from per-image predictions.

    predictions: iterable of dicts with image_id int, boxes [N, 4] float
    (y1, x1, y2, x2 in pixels of the original image), class_ids [N] (contiguous
    1..K), scores [N] float.
    categories: maps class ids to dataset ids (`.to_coco`, as data.coco.Categories).
    decimals: bbox values rounded to this many decimals (computed in float64);
    None: not rounded, computed in the boxes' own dtype (float32 boxes give
    what torchvision's coco_eval.py writes: x2 - x1 in float32).
    Returns [{image_id, category_id, bbox [x, y, w, h], score}].
    """
    results = []
    for p in predictions:
        if not len(p["class_ids"]):
            continue
        boxes = np.asarray(p["boxes"], None if decimals is None else np.float64).reshape(-1, 4)
        xywh = np.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], axis=1)
        for box, cat, score in zip(xywh, categories.to_coco(p["class_ids"]), p["scores"]):
            bbox = [float(v) if decimals is None else round(float(v), decimals) for v in box]
            results.append({"image_id": int(p["image_id"]), "category_id": int(cat), "bbox": bbox,
                            "score": float(score)})
    return results


def segm_results(predictions, categories):
    """COCO segm results from per-image predictions.

    predictions: iterable of dicts with image_id int, masks at the original
    image size (either [N, H, W] 0/1, or an object with an rle() method giving
    the N COCO RLEs, such as models.mask_rcnn.PastedMasks), class_ids [N]
    (contiguous 1..K), scores [N] float.
    Returns [{image_id, category_id (COCO id), segmentation {size, counts: str},
    score}], without a `bbox` key (it would make COCOeval size masks by box area).
    """
    results = []
    for p in predictions:
        masks = p["masks"]
        if not len(masks):
            continue
        if hasattr(masks, "rle"):  # duck-typed: data does not import models
            rles = masks.rle()
        else:
            rles = mask_utils.encode(np.asfortranarray(np.asarray(masks, np.uint8).transpose(1, 2, 0)))
        for rle, cat, score in zip(rles, categories.to_coco(p["class_ids"]), p["scores"]):
            results.append({"image_id": int(p["image_id"]), "category_id": int(cat),
                            "segmentation": {"size": [int(v) for v in rle["size"]],
                                             "counts": rle["counts"].decode("ascii")},
                            "score": float(score)})
    return results


def write_results(path, results):
    """Write COCO results (a list of dicts) as JSON."""
    with open(path, "w") as f:
        json.dump(results, f)


def evaluate_results(coco_gt, results, iou_type, verbose=False, image_ids=None):
    """COCOeval of `results` (a list of result dicts) against `coco_gt` (a pycocotools COCO).

    iou_type: "bbox" or "segm". Returns {f"{iou_type}_{name}": float} for
    STAT_NAMES: in [0, 1]; -1.0 where the ground truth has no object of that
    size (COCOeval's convention); all 0.0 when there are no results. Evaluates
    the images image_ids (as torchvision's CocoEvaluator sets params.imgIds to
    the images it ran), None: every image of coco_gt. verbose=True prints
    COCOeval's table.
    """
    names = [f"{iou_type}_{name}" for name in STAT_NAMES]
    if not results:
        return {name: 0.0 for name in names}
    chatter = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with chatter:
        # loadRes writes area/bbox/id into the dicts it is given: hand it copies.
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(names, evaluator.stats)}


def evaluate_segm(coco_gt, results, verbose=False, image_ids=None):
    """COCO mask AP: {segm_AP, segm_AP50, segm_AP75, segm_APs, segm_APm, segm_APl} of evaluate_results."""
    metrics = evaluate_results(coco_gt, results, "segm", verbose, image_ids)
    return {name: metrics[name] for name in SEGM_METRICS}

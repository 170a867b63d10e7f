"""COCO evaluation of a Mask R-CNN checkpoint (what `evaluate.py --model mask_rcnn` runs).

    metrics = evaluate_on_coco("runs/r50/best.keras", "/data/coco", "eval/")               # from raw images
    metrics = evaluate_on_coco("runs/r50/best.keras", "/data/coco", "eval/", boxes="gt")   # oracle boxes

The detections come from models/mask_rcnn/prediction.py (detect_dataset), the
oracle masks from the detector's own class and mask branches on the
ground-truth boxes (models/mask_rcnn/oracle.py: oracle_heads_model,
predict_oracle_masks), the results files and COCOeval from data/coco/results.py.

How detections become COCO results and AP (coco_settings): a model converted
from torchvision is scored as torchvision's references/detection scores it
(engine.evaluate with coco_eval.CocoEvaluator), so that it reproduces its
published box and mask AP; a run's own checkpoint keeps this project's rules.
"""
import json
import os

# torchvision's references/detection evaluation of maskrcnn_resnet50_fpn(_v2): the model's transform resizes to
# min_size 800 / max_size 1333, it keeps box_score_thresh 0.05 (score > 0.05) and box_detections_per_img 100,
# coco_eval.py keeps mask pixels `> 0.5`, writes the float32 boxes unrounded, and COCOeval scores the images
# it ran (params.imgIds). Batch size 1, as its evaluation loader; the category ids are the model's labels
# (COCO ids), as the converted model's "categories" layer gives them.
TORCHVISION_SETTINGS = {"short_side": 800, "long_side": 1333, "mask_rule": "above", "score_threshold": 0.05,
                        "detections_per_image": 100, "box_decimals": None, "scored_images": "evaluated"}
# This project's rules for a run's own checkpoint: its config.json's resize, the model's own score threshold
# and detection count (None), mask pixels >= 0.5, boxes to 0.01 px, COCOeval over every image of the split.
PROJECT_SETTINGS = {"short_side": None, "long_side": None, "mask_rule": "at_least", "score_threshold": None,
                    "detections_per_image": None, "box_decimals": 2, "scored_images": "all"}
MASK_RULES = ("above", "at_least")  # pixel on iff probability > 0.5, or >= 0.5
SCORED_IMAGES = ("evaluated", "all")


def is_converted_from_torchvision(checkpoint):
    """True for a .keras file models.convert wrote from a torchvision checkpoint (its provenance's source)."""
    from models.keras_files import read_provenance

    provenance = read_provenance(checkpoint)
    return bool(provenance) and str(provenance.get("source", "")).startswith("torchvision")


def coco_settings(checkpoint, detector, **given):
    """The evaluation settings for `checkpoint`: TORCHVISION_SETTINGS for a converted torchvision model, else
    PROJECT_SETTINGS, with each setting in `given` that is not None taking their place.

    Settings: short_side, long_side (the resize; None: loading.inference_sizes's, the run's config.json else
    800 / 1333); mask_rule ("above": mask pixels > 0.5, "at_least": >= 0.5); score_threshold (keep scores
    above it; None: the model's own threshold); detections_per_image (the best N; None: all the model gives);
    box_decimals (bbox values rounded to N decimals; "none": unrounded); scored_images ("evaluated": COCOeval
    over the images run, "all": every image of the split, images left out by max_images count as missed).
    Returns the complete dict plus "defaults" ("torchvision" or "project"), with the resize, score threshold
    and detection count resolved. Raises data.errors.UsageError (naming the evaluate.py flag) for a score
    threshold below the model's own or more detections than the model gives.
    """
    from data.errors import UsageError
    from models.mask_rcnn.loading import inference_sizes

    converted = is_converted_from_torchvision(checkpoint)
    settings = dict(TORCHVISION_SETTINGS if converted else PROJECT_SETTINGS)
    settings.update({key: value for key, value in given.items() if value is not None})
    if settings["box_decimals"] == "none":
        settings["box_decimals"] = None
    settings.update(inference_sizes(checkpoint, settings["short_side"], settings["long_side"]))
    layer = detector.get_layer("detections")
    own_threshold, own_count = float(layer.score_threshold), int(layer.max_detections)
    if settings["score_threshold"] is None:
        settings["score_threshold"] = own_threshold
    elif settings["score_threshold"] < own_threshold:
        raise UsageError(f"--score-threshold {settings['score_threshold']}: below the threshold built into "
                         f"{checkpoint} ({own_threshold}), whose detections it never returns")
    if settings["detections_per_image"] is None:
        settings["detections_per_image"] = own_count
    elif settings["detections_per_image"] > own_count:
        raise UsageError(f"--detections-per-image {settings['detections_per_image']}: {checkpoint} returns at "
                         f"most {own_count} detections per image")
    return {**settings, "defaults": "torchvision" if converted else "project"}


def evaluate_on_coco(checkpoint, data_dir, out_dir, *, split="val", boxes="detector", class_source="predicted",
                     short_side=None, long_side=None, max_images=0, progress=None, precision="float32", **settings):
    """COCO AP of a Mask R-CNN checkpoint on one split; writes results and metrics.json, prints them; returns metrics.

    boxes="detector": the detector from raw images; writes
    out_dir/bbox_results.json and out_dir/segm_results.json (COCO results
    format, the category ids the model carries) and out_dir/metrics.json
    (bbox_* and segm_*: COCOeval's twelve numbers each).
    boxes="gt": masks for the ground-truth boxes from the detector's own class
    and mask branches (the oracle setting: oracle.oracle_heads_model);
    out_dir/segm_results.json and metrics.json with segm AP. class_source
    ("predicted" or "ground_truth"): which class picks each box's mask channel
    (and gives its category).
    How images are resized, which detections are kept, how masks are
    thresholded, boxes written and images scored: coco_settings (short_side,
    long_side and the keyword `settings`: mask_rule, score_threshold,
    detections_per_image, box_decimals, scored_images; None: the default for
    the checkpoint's kind; with boxes="gt" only the resize and scored_images
    apply). max_images: the first N only (0 = all). metrics also holds boxes,
    images, detections (and class_source for boxes="gt") and "settings", the
    settings used. progress: a data.progress.Progress for the
    images (and a first use's conversion of the split); None: shown on stderr.
    precision: "float32" or "bfloat16", the detector's compute dtype (load_detector); metrics["precision"].
    User errors raise data.errors.UsageError or CheckpointError, one line naming
    the file and the evaluate.py flag.
    """
    from data import coco
    from data.coco.results import bbox_results, evaluate_results
    from data.errors import UsageError
    from models.mask_rcnn.loading import load_detector
    from models.mask_rcnn.oracle import oracle_heads_model, predict_oracle_masks
    from models.mask_rcnn.prediction import ModelCategories, detect_dataset

    detector = load_detector(checkpoint, hint="pass --model pspnet", precision=precision)
    try:
        split_data = coco.read_coco(data_dir, split, progress=progress)
    except FileNotFoundError as error:
        raise UsageError(f"--data {data_dir}: {error}") from None
    used = coco_settings(checkpoint, detector, short_side=short_side, long_side=long_side, **settings)
    # Batch size 1, as torchvision's evaluation loader: a batch pads its images to the largest.
    dataset = coco.make_dataset(split_data, batch_size=1, training=False, short_side=used["short_side"],
                                long_side=used["long_side"])
    total = split_data.num_images if hasattr(split_data, "num_images") else len(split_data.records)
    if max_images:
        dataset = dataset.take(max_images)
        total = min(total, max_images)
    os.makedirs(out_dir, exist_ok=True)
    categories = ModelCategories(detector)
    if boxes == "gt":
        # The oracle pastes at the ground-truth boxes with this project's rule (oracle.py); of the settings, only
        # the resize and the scored images apply.
        used = {key: used[key] for key in ("short_side", "long_side", "scored_images", "defaults")}
        predictions = predict_oracle_masks(oracle_heads_model(detector), dataset, class_source=class_source,
                                           progress=progress, total=total)
        results = {"segm": coco.segm_results(predictions, categories)}
        metrics = coco.evaluate_segm(split_data.coco, results["segm"], image_ids=_scored(used, predictions))
    else:
        predictions = detect_dataset(detector, dataset, score_threshold=used["score_threshold"],
                                     detections_per_image=used["detections_per_image"],
                                     mask_above=used["mask_rule"] == "above", progress=progress, total=total)
        results = {"bbox": bbox_results(predictions, categories, decimals=used["box_decimals"]),
                   "segm": coco.segm_results(predictions, categories)}
        metrics = {}
        for iou_type, found in results.items():
            metrics.update(evaluate_results(split_data.coco, found, iou_type,
                                            image_ids=_scored(used, predictions)))
    for iou_type, found in results.items():
        coco.write_results(os.path.join(out_dir, f"{iou_type}_results.json"), found)
    metrics.update(boxes=boxes, images=len(predictions), detections=sum(len(p["class_ids"]) for p in predictions))
    if boxes == "gt":
        metrics["class_source"] = class_source
    metrics["settings"] = used
    metrics["precision"] = precision
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print("\n".join(f"{key:<14}{value:.4f}" for key, value in metrics.items() if isinstance(value, float)))
    print(f"wrote {out_dir}/{'_results.json, '.join(results)}_results.json and metrics.json")
    return metrics


def _scored(settings, predictions):
    """The image ids COCOeval scores: those run ("evaluated"), or None (every image of the split)."""
    return [p["image_id"] for p in predictions] if settings["scored_images"] == "evaluated" else None

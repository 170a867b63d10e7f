"""COCO evaluation of a Mask R-CNN checkpoint (what `evaluate.py --model mask_rcnn` runs).

    metrics = evaluate_on_coco("runs/r50/best.keras", "/data/coco", "eval/")               # from raw images
    metrics = evaluate_on_coco("runs/r50/best.keras", "/data/coco", "eval/", boxes="gt")   # oracle boxes

The detections come from models/mask_rcnn/prediction.py (detect_dataset), the
oracle masks from the detector's own class and mask branches on the
ground-truth boxes (models/mask_rcnn/oracle.py: oracle_heads_model,
predict_oracle_masks), the results files and COCOeval from data/coco/results.py.
"""
import json
import os



def evaluate_on_coco(checkpoint, data_dir, out_dir, *, split="val", boxes="detector", class_source="predicted",
                     short_side=None, long_side=None, max_images=0, progress=None):
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
    Images are resized as in training (loading.inference_sizes: short_side,
    long_side, else the run's config.json, else 800 / 1333). max_images: the
    first N only (0 = all). metrics also holds boxes, images, detections (and
    class_source for boxes="gt"). progress: a data.progress.Progress for the
    images (and a first use's conversion of the split); None: shown on stderr.
    User errors raise data.errors.UsageError or CheckpointError, one line naming
    the file and the evaluate.py flag.
    """
    from data import coco
    from data.coco.results import bbox_results, evaluate_results
    from data.errors import UsageError
    from models.mask_rcnn.loading import inference_sizes, load_detector
    from models.mask_rcnn.oracle import oracle_heads_model, predict_oracle_masks
    from models.mask_rcnn.prediction import ModelCategories, detect_dataset

    detector = load_detector(checkpoint, hint="pass --model pspnet")
    try:
        split_data = coco.read_coco(data_dir, split, progress=progress)
    except FileNotFoundError as error:
        raise UsageError(f"--data {data_dir}: {error}") from None
    sizes = inference_sizes(checkpoint, short_side, long_side)
    dataset = coco.make_dataset(split_data, batch_size=1, training=False, **sizes)
    total = split_data.num_images if hasattr(split_data, "num_images") else len(split_data.records)
    if max_images:
        dataset = dataset.take(max_images)
        total = min(total, max_images)
    os.makedirs(out_dir, exist_ok=True)
    categories = ModelCategories(detector)
    if boxes == "gt":
        predictions = predict_oracle_masks(oracle_heads_model(detector), dataset, class_source=class_source,
                                           progress=progress, total=total)
        results = {"segm": coco.segm_results(predictions, categories)}
        metrics = coco.evaluate_segm(split_data.coco, results["segm"])
    else:
        predictions = detect_dataset(detector, dataset, progress=progress, total=total)
        results = {"bbox": bbox_results(predictions, categories), "segm": coco.segm_results(predictions, categories)}
        metrics = {}
        for iou_type, found in results.items():
            metrics.update(evaluate_results(split_data.coco, found, iou_type))
    for iou_type, found in results.items():
        coco.write_results(os.path.join(out_dir, f"{iou_type}_results.json"), found)
    metrics.update(boxes=boxes, images=len(predictions), detections=sum(len(p["class_ids"]) for p in predictions))
    if boxes == "gt":
        metrics["class_source"] = class_source
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print("\n".join(f"{key:<14}{value:.4f}" for key, value in metrics.items() if isinstance(value, float)))
    print(f"wrote {out_dir}/{'_results.json, '.join(results)}_results.json and metrics.json")
    return metrics

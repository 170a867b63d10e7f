"""Evaluate a checkpoint the way the benchmark does: Cityscapes mIoU (PSPNet) or COCO mask AP (Mask R-CNN).

    python evaluate.py --model pspnet --checkpoint runs/x/best.keras --data /data/cityscapes --split val --out eval/
    python evaluate.py ... --sliding --flip --scales 0.5,0.75,1,1.25,1.5,1.75
    python evaluate.py --model mask_rcnn --checkpoint FILE --data COCO_DIR --split val --out DIR   # from raw images
    python evaluate.py --model mask_rcnn --boxes gt --checkpoint FILE --data COCO_DIR --split val --out DIR

PSPNet output in OUT: metrics.json (mIoU, per_class_iou, pixel_accuracy,
mean_class_accuracy, confusion_matrix), <city>_<seq>_<frame>_pred_labelIds.png
(single-channel labelIds, what the official evaluator and the test server
read: `CITYSCAPES_RESULTS=OUT csEvalPixelLevelSemanticLabeling`), confusion_matrix.png,
and colour previews in OUT/color/color_<city>_<seq>_<frame>.png. The evaluator
searches CITYSCAPES_RESULTS recursively for "<city>_<seq>_<frame>*.png", so the
previews' names start with "color_": no file but the labelIds PNG matches. Scores are computed at
full label resolution, over the 19 classes; a class absent from both the
ground truth and the predictions has no IoU and is left out of the mean, as in
the official cityscapesScripts evaluator.
"""
import contextlib
import io
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN CPU kernels on (TensorFlow enables them only on some CPUs): 1.5x faster PSPNet training
# steps here, see BENCHMARKS.md. TF_ENABLE_ONEDNN_OPTS=0 in the environment turns them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import numpy as np  # noqa: E402

IGNORE_LABEL = 255


class SegmentationScores:
    """Confusion matrix over a whole split and the scores derived from it.

    update(gt, pred): gt, pred int arrays of one shape; gt pixels outside
    [0, num_classes) (255 = ignore) are skipped, as in the official evaluator.
    """

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.confusion = np.zeros((num_classes, num_classes), np.int64)  # rows: ground truth, cols: prediction

    def update(self, gt, pred):
        gt = np.asarray(gt).reshape(-1).astype(np.int64)
        pred = np.asarray(pred).reshape(-1).astype(np.int64)
        if gt.shape != pred.shape:
            raise ValueError(f"prediction has {pred.size} pixels, ground truth {gt.size}")
        keep = (gt >= 0) & (gt < self.num_classes)
        index = gt[keep] * self.num_classes + np.clip(pred[keep], 0, self.num_classes - 1)
        self.confusion += np.bincount(index, minlength=self.num_classes ** 2).reshape(self.confusion.shape)

    def per_class_iou(self):
        """[C] float: TP / (TP + FP + FN); NaN for a class in neither ground truth nor prediction."""
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def mean_iou(self):
        iou = self.per_class_iou()
        return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else 0.0

    def pixel_accuracy(self):
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else 0.0

    def mean_class_accuracy(self):
        """Mean over classes present in the ground truth of TP / (pixels of that class)."""
        gt_pixels = self.confusion.sum(1)
        present = gt_pixels > 0
        return float(np.mean(np.diag(self.confusion)[present] / gt_pixels[present])) if present.any() else 0.0

    def as_dict(self, class_names):
        iou = self.per_class_iou()
        return {
            "mIoU": self.mean_iou(),
            "per_class_iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, iou)},
            "pixel_accuracy": self.pixel_accuracy(),
            "mean_class_accuracy": self.mean_class_accuracy(),
            "confusion_matrix": self.confusion.tolist(),
        }


def format_table(metrics):
    lines = [f"{'class':<16}{'IoU':>8}"]
    for name, value in metrics["per_class_iou"].items():
        lines.append(f"{name:<16}{'   n/a' if value is None else f'{value:8.4f}'}")
    lines += [f"{'mIoU':<16}{metrics['mIoU']:8.4f}",
              f"{'pixel accuracy':<16}{metrics['pixel_accuracy']:8.4f}",
              f"{'mean class acc.':<16}{metrics['mean_class_accuracy']:8.4f}"]
    return "\n".join(lines)


def plot_confusion(confusion, class_names, path):
    """Row-normalised confusion matrix (rows: ground truth) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = confusion.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(rows > 0, confusion / np.maximum(rows, 1), 0.0)
    size = max(6, 0.45 * len(class_names))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=90)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            if normalised[i, j] >= 0.01:
                ax.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if normalised[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def load_checkpoint(checkpoint, kind=None):
    """A .keras file written by train.py or models.convert -> the Keras model in it.

    Loaded with safe_mode=True (no Lambda layers, no classes this project does not define);
    kind ("pspnet" or "mask_rcnn"): refuse a checkpoint of the other model. Raises
    models.checkpoints.CheckpointError, one line naming the file.
    """
    from models import checkpoints

    model = checkpoints.load_keras_file(checkpoint)
    if kind is not None:
        checkpoints.check_kind(model, kind, checkpoint, hint={
            checkpoints.MASK_RCNN: "pass --model mask_rcnn", checkpoints.PSPNET: "pass --model pspnet"})
    return model


def load_segmentation_model(checkpoint):
    """A .keras PSPNet checkpoint -> a model with only the main logits output."""
    from models.pspnet import inference_model

    model = load_checkpoint(checkpoint, kind="pspnet")
    return inference_model(model) if isinstance(model.output, dict) else model


def evaluate_mask_rcnn(args):
    """COCO AP of a Mask R-CNN checkpoint; returns the metrics dict.

    --boxes detector (default): the detector from raw images; writes
    OUT/bbox_results.json and OUT/segm_results.json (COCO results format, the
    category ids the model carries) and OUT/metrics.json (bbox_* and segm_*:
    COCOeval's twelve numbers each). --boxes gt: masks for the ground-truth
    boxes (the oracle setting; a detector checkpoint or a mask-head one);
    OUT/segm_results.json and metrics.json with segm AP.
    Images are resized as in training (detector_io.inference_sizes).
    """
    from data import coco
    from data.coco_results import bbox_results, evaluate_results
    from models.mask_rcnn import predict_oracle_masks
    from models.mask_rcnn.detector_io import inference_sizes, is_detector, oracle_heads_model
    from models.mask_rcnn.run_detector import ModelCategories, detect_dataset

    model = load_checkpoint(args.checkpoint, kind="mask_rcnn")
    detector = getattr(model, "detector", model)
    if args.boxes == "detector" and not is_detector(detector):
        raise SystemExit(f"--checkpoint {args.checkpoint}: holds a mask-head model (no RPN); evaluate it with --boxes gt")
    try:
        split = coco.read_coco(args.data, args.split)
    except FileNotFoundError as error:
        raise SystemExit(f"--data {args.data}: {error}")
    sizes = inference_sizes(args.checkpoint, args.short_side, args.long_side)
    dataset = coco.make_dataset(split, batch_size=1, training=False, **sizes)
    if args.max_images:
        dataset = dataset.take(args.max_images)
    os.makedirs(args.out, exist_ok=True)
    if args.boxes == "gt":
        heads = oracle_heads_model(detector) if is_detector(detector) else model
        predictions = predict_oracle_masks(heads, dataset, class_source=args.class_source)
        categories = ModelCategories(detector) if is_detector(detector) else split.categories
        results = {"segm": coco.segm_results(predictions, categories)}
        metrics = coco.evaluate_segm(split.coco, results["segm"])
    else:
        predictions = detect_dataset(detector, dataset)
        categories = ModelCategories(detector)
        results = {"bbox": bbox_results(predictions, categories), "segm": coco.segm_results(predictions, categories)}
        metrics = {}
        for iou_type, found in results.items():
            metrics.update(evaluate_results(split.coco, found, iou_type))
    for iou_type, found in results.items():
        coco.write_results(os.path.join(args.out, f"{iou_type}_results.json"), found)
    metrics.update(boxes=args.boxes, images=len(predictions), detections=sum(len(p["class_ids"]) for p in predictions))
    if args.boxes == "gt":
        metrics["class_source"] = args.class_source
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print("\n".join(f"{key:<14}{value:.4f}" for key, value in metrics.items() if isinstance(value, float)))
    print(f"wrote {args.out}/{'_results.json, '.join(results)}_results.json and metrics.json")
    return metrics


def evaluate_pspnet(model, dataset, out_dir, *, num_classes=19, mode="whole", crop_size=(713, 713), stride=None,
                    flip=False, scales=(1.0,), write_predictions=True):
    """Scores `model` on an eval dataset and writes predictions; returns the metrics dict.

    dataset: batches {"image": [B, H, W, 3] float32 normalised, "label": [B, H, W] int32 trainIds, "id": [B]}
    as data.cityscapes.eval_pipeline makes them.
    """
    from data import cityscapes, images
    from models.pspnet.inference import colorize, predict_classes, predict_logits

    scores = SegmentationScores(num_classes)
    os.makedirs(os.path.join(out_dir, "color"), exist_ok=True)
    for batch in dataset:
        probabilities = predict_logits(model, batch["image"], mode=mode, crop_size=crop_size, stride=stride,
                                       flip=flip, scales=scales)
        predictions = predict_classes(probabilities).numpy()
        for i, example_id in enumerate(batch["id"].numpy()):
            example_id = example_id.decode()
            scores.update(batch["label"][i].numpy(), predictions[i])
            if write_predictions:
                images.write_png(os.path.join(out_dir, f"{example_id}_pred_labelIds.png"),
                           cityscapes.to_label_ids(predictions[i]))
                # Named so that the official evaluator's "<city>_<seq>_<frame>*.png" search skips it.
                images.write_png(os.path.join(out_dir, "color", f"color_{example_id}.png"),
                           colorize(predictions[i], cityscapes.CLASS_COLORS))
    metrics = scores.as_dict(cityscapes.CLASS_NAMES[:num_classes] if num_classes == cityscapes.NUM_CLASSES
                             else [str(i) for i in range(num_classes)])
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    plot_confusion(scores.confusion, list(metrics["per_class_iou"]), os.path.join(out_dir, "confusion_matrix.png"))
    return metrics


def build_parser():
    from data import cli_checks

    parser = cli_checks.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["pspnet", "mask_rcnn"], default="pspnet")
    parser.add_argument("--checkpoint", required=True, help=".keras file written by train.py")
    parser.add_argument("--data", required=True, help="dataset root (Cityscapes: holds leftImg8bit/ and gtFine/)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", required=True, help="folder for metrics.json and predictions")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier evaluation in --out")
    parser.add_argument("--tfds", action="store_true", help="read --data as the folder with the Cityscapes zips (TFDS)")
    parser.add_argument("--sliding", action="store_true", help="sliding-window inference (default: whole image)")
    parser.add_argument("--crop", type=int, default=713, help="sliding window size")
    parser.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    parser.add_argument("--scales", default="1", help="multi-scale factors, e.g. 0.5,0.75,1,1.25")
    parser.add_argument("--max-images", type=int, default=0, help="evaluate the first N images only (0 = all)")
    parser.add_argument("--boxes", choices=["detector", "gt"], default="detector",
                        help="Mask R-CNN: detector = detect from raw images (bbox and segm AP); "
                             "gt = masks for the ground-truth boxes (oracle segm AP)")
    parser.add_argument("--class-source", choices=["predicted", "ground_truth"], default="predicted",
                        help="Mask R-CNN: which class picks each box's mask channel (and gives its category)")
    cli_checks.add_resize_flags(parser)
    cli_checks.add_skip_bad_flag(parser)
    cli_checks.add_debug_flag(parser)
    return parser


def check_args(args):
    """Checks the parsed flags (raises data.cli_checks.UsageError naming the flag); parses --scales."""
    from data import cli_checks

    cli_checks.check_positive("--crop", args.crop)
    args.scales = cli_checks.parse_scales("--scales", args.scales)
    cli_checks.check_non_negative("--max-images", args.max_images, " (0 evaluates every image)")
    for flag, value in (("--short-side", args.short_side), ("--long-side", args.long_side)):
        if value is not None:
            cli_checks.check_positive(flag, value)
    cli_checks.check_output_outside("--out", args.out, "--data", args.data)
    return args


def main(argv=None):
    from data import cli_checks

    args = build_parser().parse_args(argv)
    with cli_checks.user_errors(args.debug):
        check_args(args)
        if os.path.exists(os.path.join(args.out, "metrics.json")) and not args.overwrite:
            raise SystemExit(f"--out {args.out}: holds an earlier evaluation (metrics.json); "
                             "pass --overwrite or another --out")
        if args.model == "mask_rcnn":
            return evaluate_mask_rcnn(args)
        return _evaluate_pspnet_cli(args)


def _evaluate_pspnet_cli(args):
    import tensorflow as tf

    from data import cityscapes, cli_checks

    skipped = []
    if args.tfds:
        elements = cityscapes.read_tfds(args.split, data_dir=os.path.join(args.data, "tfds"), manual_dir=args.data)
    else:
        try:
            elements = cityscapes.read_folder(args.data, args.split, skip_bad=args.skip_bad, skipped=skipped)
        except FileNotFoundError as error:
            raise SystemExit(f"--data: {error}")
    model = load_segmentation_model(args.checkpoint)  # after the data: a wrong --data is found in seconds
    dataset = cityscapes.eval_pipeline(elements, batch_size=1)
    if args.max_images:
        dataset = dataset.take(args.max_images)
    try:
        metrics = evaluate_pspnet(model, dataset, args.out, num_classes=model.output.shape[-1],
                                  mode="sliding" if args.sliding else "whole", crop_size=args.crop, flip=args.flip,
                                  scales=args.scales)
    except tf.errors.InvalidArgumentError as error:
        examples = None
        if not args.tfds:
            with contextlib.redirect_stderr(io.StringIO()):  # the listing's --skip-bad warnings were shown already
                examples = cityscapes.find_examples(args.data, args.split, skip_bad=True)
        bad = cityscapes.explain_decode_error(error, examples)  # TensorFlow's decoders name no file
        if bad is None:
            raise
        raise bad from None
    print(format_table(metrics))
    print(f"wrote {args.out}/metrics.json, predictions and confusion_matrix.png")
    if skipped:
        cli_checks.warn(f"{len(skipped)} {args.split} examples with bad files were skipped and not scored "
                        "(--skip-bad; listed above)")
    return metrics


if __name__ == "__main__":
    main()
    sys.exit(0)

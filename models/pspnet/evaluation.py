"""Evaluating a PSPNet the way the Cityscapes benchmark does (what `evaluate.py --model pspnet` runs).

    metrics = evaluate_on_cityscapes("runs/x/best.keras", "/data/cityscapes", "eval/", split="val", flip=True)
    metrics = evaluate_pspnet(model, dataset, "eval/")   # any model or callable, any eval dataset

Output folder OUT: metrics.json (mIoU, per_class_iou, pixel_accuracy,
mean_class_accuracy, confusion_matrix, protocol: the test protocol's name and
settings), <city>_<seq>_<frame>_pred_labelIds.png
(single-channel labelIds, what the official evaluator and the test server
read: `CITYSCAPES_RESULTS=OUT csEvalPixelLevelSemanticLabeling`), confusion_matrix.png,
and colour previews in OUT/color/color_<city>_<seq>_<frame>.png. The evaluator
searches CITYSCAPES_RESULTS recursively for "<city>_<seq>_<frame>*.png", so the
previews' names start with "color_": no file but the labelIds PNG matches.
Scores are computed at full label resolution over the classes; a class absent
from both the ground truth and the predictions has no IoU and is left out of
the mean, as in the official cityscapesScripts evaluator.
"""
import contextlib
import io
import json
import os

import numpy as np


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
    """The per-class IoU table and the three summary scores of a metrics dict, as printed lines."""
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


def evaluate_pspnet(model, dataset, out_dir, *, num_classes=19, mode="whole", crop_size=(713, 713), stride=None,
                    flip=False, scales=(1.0,), write_predictions=True, progress=None, total=None, protocol=None,
                    precision="float32"):
    """Scores `model` on an eval dataset and writes predictions; returns the metrics dict.

    model: what models.pspnet.inference.predict_logits takes (a PSPNet, or a
    callable [N, h, w, 3] float32 -> logits [N, h, w, C]).
    dataset: batches {"image": [B, H, W, 3] float32 normalised, "label": [B, H, W] int32 trainIds, "id": [B]}
    as data.cityscapes.eval_pipeline makes them; for a protocol other than "ours", the images
    uint8 RGB as read (raw_eval_pipeline), each predicted on its own.
    mode, crop_size, stride, flip, scales: as predict_logits (the "ours" protocol).
    protocol: a models.pspnet.protocol_settings.TestProtocol (None: "ours" with the arguments above);
    metrics["protocol"] records its name and settings, metrics["precision"] `precision` (the model's:
    models.precision.with_precision).
    Writes out_dir/metrics.json and confusion_matrix.png, and with
    write_predictions the labelIds PNGs and colour previews (module docstring).
    progress: a data.progress.Progress (None: shown on stderr), over `total` images (None: unknown).
    """
    from data import cityscapes, images
    from data.progress import as_progress
    from models.pspnet.inference import colorize, predict_classes, predict_logits
    from models.pspnet.protocol_settings import TestProtocol

    if protocol is None:
        protocol = TestProtocol("ours", dict(mode=mode, crop_size=crop_size, stride=stride, flip=flip, scales=scales))
    scores = SegmentationScores(num_classes)
    os.makedirs(os.path.join(out_dir, "color"), exist_ok=True)
    with as_progress(progress).bar(total, "evaluating") as bar:
        for batch in dataset:
            if protocol.name == "ours":  # the batch at once, normalised by the pipeline
                predictions = predict_classes(predict_logits(model, batch["image"], **protocol.settings)).numpy()
            else:  # the source's protocol: one uint8 image at a time
                predictions = np.stack([protocol.predict(model, rgb) for rgb in batch["image"].numpy()])
            for i, example_id in enumerate(batch["id"].numpy()):
                example_id = example_id.decode()
                scores.update(batch["label"][i].numpy(), predictions[i])
                if write_predictions:
                    images.write_png(os.path.join(out_dir, f"{example_id}_pred_labelIds.png"),
                                     cityscapes.to_label_ids(predictions[i]))
                    # Named so that the official evaluator's "<city>_<seq>_<frame>*.png" search skips it.
                    images.write_png(os.path.join(out_dir, "color", f"color_{example_id}.png"),
                                     colorize(predictions[i], cityscapes.CLASS_COLORS))
                bar.update()
    metrics = scores.as_dict(cityscapes.CLASS_NAMES[:num_classes] if num_classes == cityscapes.NUM_CLASSES
                             else [str(i) for i in range(num_classes)])
    metrics["protocol"] = protocol.as_dict()
    metrics["precision"] = precision
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    plot_confusion(scores.confusion, list(metrics["per_class_iou"]), os.path.join(out_dir, "confusion_matrix.png"))
    return metrics


def raw_eval_pipeline(elements):
    """Decoded elements -> batches of one {"image": uint8 [1, H, W, 3] RGB as read, "label": int32 [1, H, W]
    trainIds (if the elements have labels), "id": string [1]}: what the sources' protocols take."""
    import tensorflow as tf

    from data.cityscapes import to_train_ids

    def prepare(element):
        prepared = {"id": element["id"], "image": tf.cast(element["image"], tf.uint8)}
        if "label" in element:
            prepared["label"] = tf.cast(to_train_ids(element["label"]), tf.int32)
        return prepared

    return elements.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(1).prefetch(tf.data.AUTOTUNE)


def evaluate_on_cityscapes(checkpoint, data_dir, out_dir, *, split="val", tfds=False, sliding=False, crop_size=713,
                           flip=False, scales=(1.0,), max_images=0, skip_bad=False, progress=None, protocol=None,
                           precision="float32"):
    """Evaluates a .keras PSPNet on a Cityscapes split into out_dir; prints the scores; returns the metrics dict.

    data_dir: the Cityscapes root (leftImg8bit/, gtFine/), or with tfds the
    folder with the official zips (TFDS builds its records in data_dir/tfds).
    sliding: crop_size windows (else the whole image); flip, scales: as
    models.pspnet.inference.predict_logits. protocol: a models.pspnet.protocol_settings.TestProtocol
    (None: "ours" with sliding, crop_size, flip, scales). max_images: the first N only (0 = all).
    precision: "float32" or "bfloat16", the model's compute dtype (load_inference_model); in metrics.json.
    skip_bad: examples with an unreadable image or label are left out with a
    warning each and a count at the end. Writes into out_dir what
    evaluate_pspnet writes (replacing earlier files of the same names).
    progress: a data.progress.Progress (None: shown on stderr).
    User errors (a wrong data_dir, a bad checkpoint or image) raise data.errors.UserError
    subclasses (UsageError, models.checkpoints.CheckpointError, data.images.BadImageError),
    one line naming the file and the evaluate.py flag.
    """
    import tensorflow as tf

    from data import cityscapes, cli
    from data.progress import dataset_length
    from data.errors import UsageError
    from models.pspnet.inference import load_inference_model

    skipped = []
    if tfds:
        elements = cityscapes.read_tfds(split, data_dir=os.path.join(data_dir, "tfds"), manual_dir=data_dir)
    else:
        try:
            elements = cityscapes.read_folder(data_dir, split, skip_bad=skip_bad, skipped=skipped)
        except FileNotFoundError as error:
            raise UsageError(f"--data: {error}") from None
    model = load_inference_model(checkpoint, precision)  # after the data: a wrong data_dir is found in seconds
    total = dataset_length(elements)
    if protocol is None or protocol.name == "ours":
        dataset = cityscapes.eval_pipeline(elements, batch_size=1)
    else:
        dataset = raw_eval_pipeline(elements)
    if max_images:
        dataset = dataset.take(max_images)
        total = None if total is None else min(total, max_images)
    try:
        metrics = evaluate_pspnet(model, dataset, out_dir, num_classes=model.output.shape[-1],
                                  mode="sliding" if sliding else "whole", crop_size=crop_size, flip=flip,
                                  scales=scales, progress=progress, total=total, protocol=protocol,
                                  precision=precision)
    except tf.errors.InvalidArgumentError as error:
        examples = None
        if not tfds:
            with contextlib.redirect_stderr(io.StringIO()):  # the listing's skip_bad warnings were shown already
                examples = cityscapes.find_examples(data_dir, split, skip_bad=True)
        bad = cityscapes.explain_decode_error(error, examples)  # TensorFlow's decoders name no file
        if bad is None:
            raise
        raise bad from None
    print(format_table(metrics))
    print(f"wrote {out_dir}/metrics.json, predictions and confusion_matrix.png")
    if skipped:
        cli.warn(f"{len(skipped)} {split} examples with bad files were skipped and not scored "
                        "(--skip-bad; listed above)")
    return metrics

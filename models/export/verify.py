"""Checking an export the way a client runs it: in its own runtime, in a fresh process, against predict.py.

verify() writes two photos of different odd sizes to a scratch folder, runs models/export/clients.py on
them in a new Python process in which the project's packages cannot be imported (so the artifact must
stand alone), and compares what comes back with what predict.py computes for the same checkpoint:

- PSPNet: the share of pixels whose label id agrees (the NAME_labelIds.png predict.py writes);
- Mask R-CNN: detections matched one to one (same class, box IoU >= 0.5, greedily by score), the
  mean box IoU, mask IoU and largest score difference of the matched ones.

A float32 export below AGREEMENT (PSPNet) or DETECTIONS_MATCHED (detector) is an error: the export is
wrong. bfloat16 and int8 exports change results by design: their figures are reported, not judged.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

from models.export.formats import ExportError

AGREEMENT = 0.999  # float32 PSPNet: share of pixels with predict.py's label id
DETECTIONS_MATCHED = 0.95  # float32 detector: share of detections matched (same class, box IoU >= MATCH_IOU)
MATCH_IOU = 0.5
CROPS = ((333, 457, 11, 29), (417, 301, 151, 187))  # (height, width, top, left): two odd sizes
RUNTIMES = {"saved_model": "TensorFlow", "onnx": "onnxruntime", "openvino": "OpenVINO", "litert": "LiteRT"}


def sample_photos(input_size=None):
    """Two real photos (crops of matplotlib's grace_hopper.jpg) as uint8 [H, W, 3] arrays.

    Sizes CROPS (333x457, 417x301), or both input_size (H, W) for a fixed-size export: two different
    crops where the photo is large enough, else the photo resized.
    """
    from matplotlib import cbook

    from data.images import read_image

    photo = read_image(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    if input_size is None:
        return [photo[top:top + h, left:left + w] for h, w, top, left in CROPS]
    h, w = input_size
    if h <= photo.shape[0] and w <= photo.shape[1]:
        return [photo[:h, :w], photo[photo.shape[0] - h:, photo.shape[1] - w:]]
    import tensorflow as tf

    resized = tf.cast(tf.round(tf.image.resize(photo, (h, w))), tf.uint8).numpy()
    return [resized, resized[:, ::-1].copy()]


def run_in_runtime(fmt, artifact, images, *, precision="f32", score_threshold=None, threads=None):
    """Runs clients.py on `images` in a fresh process (project packages blocked); returns one output dict per image.

    Raises ExportError with the runtime's last error line if it cannot load or run the artifact.
    """
    from models.export import clients

    with tempfile.TemporaryDirectory() as scratch:
        inputs = {f"image_{i}": image for i, image in enumerate(images)}
        if score_threshold is not None:
            inputs["score_threshold"] = np.float32(score_threshold)
        np.savez(os.path.join(scratch, "images.npz"), **inputs)
        command = [sys.executable, "-I", clients.__file__, fmt, os.path.abspath(artifact), "images.npz", "out.npz",
                   "--precision", precision] + (["--threads", str(threads)] if threads else [])
        done = subprocess.run(command, cwd=scratch, capture_output=True, text=True)
        if done.returncode != 0:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            raise ExportError(f"verify: {RUNTIMES[fmt]} could not run {artifact}: "
                              f"{lines[-1] if lines else f'exit status {done.returncode}'}")
        with np.load(os.path.join(scratch, "out.npz")) as out:
            results = [{} for _ in images]
            for key in out.files:
                index, name = key.split("/", 1)
                results[int(index)][name] = out[key]
    return results


def pixel_agreement(served_label_ids, reference_label_ids):
    """Share of pixels where the served label ids equal the reference's ([H, W] each)."""
    served, reference = np.asarray(served_label_ids), np.asarray(reference_label_ids)
    if served.shape != reference.shape:
        raise ExportError(f"verify: the export gives a {served.shape} label map for a {reference.shape} image")
    return float(np.mean(served == reference))


def box_iou(a, b):
    """IoU of boxes a [N, 4] and b [M, 4] (x1, y1, x2, y2) -> [N, M] float64."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area = lambda boxes: np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_detections(served, reference):
    """Pairs served detections with the reference's: same class, box IoU >= MATCH_IOU, best reference first.

    served: the export's outputs (boxes x1, y1, x2, y2; class_ids; scores; masks [N, H, W]);
    reference: the same keys as NumPy arrays. Returns {"reference", "served", "matched", "box_iou",
    "mask_iou" (means over the matched, 1.0 when none), "score_difference" (largest)}.
    """
    n_served, n_reference = len(served["scores"]), len(reference["scores"])
    ious = box_iou(reference["boxes"], served["boxes"])
    same_class = np.asarray(reference["class_ids"])[:, None] == np.asarray(served["class_ids"])[None, :]
    ious = np.where(same_class, ious, 0.0)
    taken, pairs = set(), []
    for r in np.argsort(-np.asarray(reference["scores"]), kind="stable"):
        candidates = [s for s in np.argsort(-ious[r], kind="stable") if s not in taken and ious[r, s] >= MATCH_IOU]
        if candidates:
            taken.add(candidates[0])
            pairs.append((r, candidates[0]))
    mask_ious = [_mask_iou(reference["masks"][r], served["masks"][s]) for r, s in pairs]
    return {"reference": n_reference, "served": n_served, "matched": len(pairs),
            "box_iou": float(np.mean([ious[r, s] for r, s in pairs])) if pairs else 1.0,
            "mask_iou": float(np.mean(mask_ious)) if pairs else 1.0,
            "score_difference": float(max((abs(float(reference["scores"][r]) - float(served["scores"][s]))
                                           for r, s in pairs), default=0.0))}


def _mask_iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def matched_share(figures):
    """Matched detections over the larger of the two counts (1.0 when both found none)."""
    larger = max(figures["reference"], figures["served"])
    return figures["matched"] / larger if larger else 1.0


def pspnet_reference(model, label_table, **settings):
    """reference(rgb) -> [H, W] uint8: predict_image's class map (what predict.py computes for `model` with these
    settings) through label_table ([256] uint8, the served graph's: for a Cityscapes model the labelIds of
    predict.py's NAME_labelIds.png)."""
    from models.pspnet.prediction import predict_image

    return lambda rgb: np.asarray(label_table)[predict_image(model, rgb, **settings)]


def detector_reference(detector, *, short_side, long_side, score_threshold):
    """reference(rgb) -> the detections predict.py keeps (boxes as x1, y1, x2, y2; dataset class ids; dense masks)."""
    from models.mask_rcnn.transform import detect

    def reference(rgb):
        found = detect(detector, [rgb], min_size=short_side, max_size=long_side, score_threshold=score_threshold)[0]
        return {"boxes": found["boxes"][:, [1, 0, 3, 2]], "class_ids": found["category_ids"],
                "scores": found["scores"], "masks": found["masks"].dense()}

    return reference


def verify(fmt, artifact, family, reference, *, input_size=None, precision="float32", score_threshold=None,
           report=print):
    """Runs the artifact in its runtime on sample_photos and compares with `reference`; returns the figures.

    family: "pspnet" or "mask_rcnn". reference(rgb) -> PSPNet: [H, W] label ids as predict.py writes
    them; detector: {"boxes" [N, 4] (x1, y1, x2, y2), "class_ids" (dataset ids), "scores", "masks"
    [N, H, W]} as predict.py keeps them at `score_threshold`. precision: "float32", "bfloat16" or
    "int8". report: where the one line per image goes. Raises ExportError for a float32 export below
    the stated agreement.
    """
    photos = sample_photos(input_size)
    runtime_precision = "bf16" if precision == "bfloat16" else "f32"
    served = run_in_runtime(fmt, artifact, photos, precision=runtime_precision,
                            score_threshold=score_threshold if family == "mask_rcnn" else None)
    figures = []
    for number, (photo, outputs) in enumerate(zip(photos, served), 1):
        size = "x".join(map(str, photo.shape[:2]))
        if family == "pspnet":
            agreement = pixel_agreement(outputs["label_ids"], reference(photo))
            figures.append({"image": size, "pixel_agreement": agreement})
            line = f"{100 * agreement:.3f}% of pixels agree with predict.py"
            failed = agreement < AGREEMENT
        else:
            count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
            found = {key: np.asarray(outputs[key])[:count] for key in ("boxes", "class_ids", "scores", "masks")}
            match = match_detections(found, reference(photo))
            figures.append({"image": size, **match})
            line = (f"{match['matched']} of {match['reference']} predict.py detections matched ({match['served']} "
                    f"served), box IoU {match['box_iou']:.4f}, mask IoU {match['mask_iou']:.4f}, scores within "
                    f"{match['score_difference']:.1e}")
            failed = matched_share(match) < DETECTIONS_MATCHED
        report(f"verify ({RUNTIMES[fmt]}, {precision}, fresh process) photo {number} {size}: {line}")
        if failed and precision == "float32":
            raise ExportError(f"verify: the {fmt} export disagrees with predict.py on photo {number} ({line}); "
                              "please report it with the command that made it")
    return figures

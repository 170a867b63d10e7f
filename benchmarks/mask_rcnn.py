"""Mask R-CNN: multi-level RoIAlign, mask pasting (ours vs a per-instance PIL loop) and the mask-head training step
(the detector's mask_head stage on ground-truth RoIs).

The whole detector's inference, against torchvision's: benchmarks.detector.
"""
import numpy as np
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_utils

from benchmarks.harness import Result, median_time
from models.mask_rcnn import DetectorTrainer, build_mask_rcnn, paste_masks, set_stage
from models.roi_align import multilevel_roi_align, roi_levels
from models.training import SegmentationSGD

NUM_CLASSES = 80  # COCO


def _config(quick):
    """Sizes of every benchmark here; the full ones are the paper's (ResNet-50 FPN, 800 x 1333 images)."""
    if quick:
        return dict(model=dict(base_width=8, fpn_channels=32, mask_head_channels=32, box_head_units=64),
                    model_name="r50/w8", image=(128, 160), roi_image=(512, 640), roi_channels=32,
                    num_rois_align=64, paste_image=(200, 300), num_paste=10, box_batch_size=64,
                    max_instances=8, num_gt=3, repeats=2)
    # box_batch_size: torchvision's 512 RoIs per image, a quarter positive at most (DetectorTrainer's defaults).
    return dict(model=dict(), model_name="resnet50", image=(800, 1344), roi_image=(800, 1344),
                roi_channels=256, num_rois_align=1000, paste_image=(800, 1333), num_paste=100, box_batch_size=512,
                max_instances=100, num_gt=15, repeats=3)


def random_boxes(rng, count, image_size, min_side=16.0, max_side=None):
    """[count, 4] float32 (y1, x1, y2, x2) boxes of varied sizes inside the image.

    Area-scale log-uniform in [min_side, max_side] (so every FPN level gets
    some), aspect ratio (h / w) log-uniform in [1/2, 2], centre uniform; then
    clipped to the image.
    """
    height, width = image_size
    max_side = max_side or 0.75 * min(height, width)
    side = np.exp(rng.uniform(np.log(min_side), np.log(max_side), count))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), count))
    h, w = side * np.sqrt(aspect), side / np.sqrt(aspect)
    cy, cx = rng.uniform(0, height, count), rng.uniform(0, width, count)
    boxes = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=1)
    boxes = np.clip(boxes, 0, [height, width, height, width])
    return boxes.astype(np.float32)


def _paste_one_pil(mask, box, image_size, threshold):
    """One instance as Matterport's unmold_mask pastes it: the box rounded to whole pixels (at least 1 x 1,
    clipped to the image), the mask resized to it with PIL bilinear, thresholded.

    Returns (y1, x1, y2, x2) ints and the [y2 - y1, x2 - x1] bool patch.
    """
    height, width = image_size
    y1, x1, y2, x2 = np.round(box).astype(int)
    y1, x1 = max(y1, 0), max(x1, 0)
    y2, x2 = min(max(y2, y1 + 1), height), min(max(x2, x1 + 1), width)
    resized = Image.fromarray(np.asarray(mask, np.float32)).resize((x2 - x1, y2 - y1), Image.BILINEAR)
    return (y1, x1, y2, x2), np.asarray(resized) >= threshold


def paste_masks_loop(masks, boxes, image_size, threshold=0.5):
    """The per-instance reference to dense masks: each mask resized with PIL into its box and pasted
    into a zero canvas.

    masks: [N, h, w] float32 probabilities; boxes: [N, 4] float (y1, x1, y2, x2) image pixels;
    image_size: (H, W). Returns [N, H, W] bool.
    """
    out = np.zeros((len(masks), *image_size), bool)
    for i, (mask, box) in enumerate(zip(masks, boxes)):
        (y1, x1, y2, x2), patch = _paste_one_pil(mask, box, image_size, threshold)
        out[i, y1:y2, x1:x2] = patch
    return out


def paste_masks_loop_rle(masks, boxes, image_size, threshold=0.5):
    """The per-instance reference to COCO RLE (Matterport's unmold_mask + build_coco_results; Detectron2 on
    CPU likewise): PIL resize into the box, paste into a full-image zero canvas, pycocotools encode.

    Same arguments as paste_masks_loop. Returns a list of N {"size": [H, W], "counts": bytes}.
    """
    rles = []
    for mask, box in zip(masks, boxes):
        (y1, x1, y2, x2), patch = _paste_one_pil(mask, box, image_size, threshold)
        canvas = np.zeros(image_size, np.uint8, order="F")
        canvas[y1:y2, x1:x2] = patch
        rles.append(mask_utils.encode(canvas))
    return rles


def _pyramid(rng, image_size, channels):
    """Random P2..P5 maps of one image: [1, ceil(H / 2^k), ceil(W / 2^k), channels] float32."""
    return [tf.constant(rng.normal(size=(1, -(-image_size[0] // 2 ** k), -(-image_size[1] // 2 ** k), channels))
                        .astype(np.float32)) for k in range(2, 6)]


def _roi_align_rows(cfg, rng):
    height, width = cfg["roi_image"]
    features = _pyramid(rng, cfg["roi_image"], cfg["roi_channels"])
    count = cfg["num_rois_align"]
    boxes = tf.constant(random_boxes(rng, count, (height, width))[None])
    levels = np.bincount(np.asarray(roi_levels(boxes))[0] - 2, minlength=4)
    results = []
    for output_size in (7, 14):
        for jit in (False, True):
            fn = tf.function(lambda f, b, n=output_size: multilevel_roi_align(f, b, output_size=n),
                             jit_compile=jit)
            seconds = median_time(lambda: fn(features, boxes).numpy(), warmup=1, repeats=cfg["repeats"])
            results.append(Result(
                f"roi_align {output_size}x{output_size}{' jit' if jit else ''}",
                f"{count} rois {height}x{width} c{cfg['roi_channels']}", seconds,
                throughput=f"{count / seconds:.0f} RoIs/s",
                note=f"P2..P5, sampling 2; RoIs per level P2..P5: {'/'.join(map(str, levels))}"))
    return results


def blob_masks(rng, count, size=28):
    """[count, size, size] float32 probabilities shaped like a trained mask head's: one smooth blob each.

    sigmoid(gain * (d + noise)): d is the signed distance in cells to a random
    ellipse (> 0 inside; approximated as (1 - its normalised radius) x its
    shorter semi-axis), centre uniform in the middle fifth of the grid,
    semi-axes uniform in [0.3, 0.55] x size (the box is fitted to the object:
    the blob fills much of it, sometimes past its edge), any orientation;
    noise is a low-frequency field, a 4 x 4 normal field (std 1.5 cells)
    upsampled bilinearly to size x size, that makes the outline wobble; gain
    uniform in [1, 3] per cell. About half the values are >= 0.5 and 80% are
    below 0.1 or above 0.9 (the rest lie within a cell or two of the outline),
    so a column of a pasted mask crosses the threshold about twice.
    """
    centre = np.arange(size) + 0.5
    y, x = centre[:, None], centre[None, :]
    out = np.empty((count, size, size), np.float32)
    for mask in out:
        cy, cx = rng.uniform(0.4 * size, 0.6 * size, 2)
        semi_y, semi_x = rng.uniform(0.3 * size, 0.55 * size, 2)
        angle = rng.uniform(0, np.pi)
        u = (y - cy) * np.cos(angle) + (x - cx) * np.sin(angle)
        v = (x - cx) * np.cos(angle) - (y - cy) * np.sin(angle)
        distance = (1 - np.sqrt((u / semi_y) ** 2 + (v / semi_x) ** 2)) * min(semi_y, semi_x)
        field = Image.fromarray(rng.normal(0, 1.5, (4, 4)).astype(np.float32)).resize((size, size), Image.BILINEAR)
        mask[:] = 1 / (1 + np.exp(-rng.uniform(1, 3) * (distance + np.asarray(field))))
    return out


def _paste_rows(cfg, rng):
    height, width = cfg["paste_image"]
    count = cfg["num_paste"]
    size = f"{count}x28x28 -> {height}x{width}"
    noise = rng.random((count, 28, 28)).astype(np.float32)
    boxes = random_boxes(rng, count, (height, width))
    blobs = blob_masks(rng, count)
    # Tensors, as predict_oracle_masks hands the oracle view's masks over.
    boxes_t = tf.constant(boxes)

    def timed(fn):
        return median_time(fn, warmup=1, repeats=cfg["repeats"])

    # (a) To COCO RLE, what evaluation does with pasted masks. Blob masks, like a trained head's, carry the target;
    # uniform noise is the worst case for ours (~14 threshold crossings per window column instead of ~2).
    loop_note = "per instance: PIL bilinear resize + threshold + paste into an HxW canvas + pycocotools encode"
    ours_note = "paste_masks(...).rle(): runs from each window column's threshold crossings"
    results = []
    for suffix, masks, target, about in (
            ("", blobs, ">= 10", "blob masks (blob_masks)"),
            (" noise", noise, "", "uniform-noise masks, the worst case, no target")):
        masks_t = tf.constant(masks)
        loop = timed(lambda: paste_masks_loop_rle(masks, boxes, (height, width)))
        ours = timed(lambda: paste_masks(masks_t, boxes_t, (height, width)).rle())
        results += [
            Result(f"paste_masks->rle{suffix}[loop PIL]", size, loop, throughput=f"{count / loop:.0f} masks/s",
                   note=f"{about}; {loop_note}"),
            Result(f"paste_masks->rle{suffix}[ours]", size, ours, throughput=f"{count / ours:.0f} masks/s",
                   ratio=loop / ours, target=target, note=f"loop time / ours (times faster); {about}; {ours_note}"),
        ]
    # (b) To a dense [N, H, W] bool array (blob masks).
    blobs_t = tf.constant(blobs)
    loop_dense = timed(lambda: paste_masks_loop(blobs, boxes, (height, width)))
    ours_dense = timed(lambda: paste_masks(blobs_t, boxes_t, (height, width)).dense())
    return results + [
        Result("paste_masks->dense[loop PIL]", size, loop_dense, throughput=f"{count / loop_dense:.0f} masks/s",
               note="blob masks; per instance: PIL bilinear resize + threshold + paste into [N, H, W] zeros"),
        Result("paste_masks->dense[ours]", size, ours_dense, throughput=f"{count / ours_dense:.0f} masks/s",
               ratio=loop_dense / ours_dense,
               note="loop time / ours (times faster), no target; blob masks; paste_masks(...).dense(): filling "
                    "[N, H, W] costs both sides the same"),
    ]


def synthetic_batch(rng, batch_size, image_size, max_instances, num_gt, mask_size=56):
    """A batch as data.coco.make_dataset(training=True) yields it: num_gt instances per image, padded to
    max_instances; images uint8 noise at image_size (the model's resize keeps that size), masks random
    0/1 crops."""
    height, width = image_size
    boxes = np.zeros((batch_size, max_instances, 4), np.float32)
    class_ids = np.zeros((batch_size, max_instances), np.int32)
    masks = np.zeros((batch_size, max_instances, mask_size, mask_size), np.uint8)
    for b in range(batch_size):
        boxes[b, :num_gt] = random_boxes(rng, num_gt, image_size, min_side=24.0)
        class_ids[b, :num_gt] = rng.integers(1, NUM_CLASSES + 1, num_gt)
        masks[b, :num_gt] = rng.random((num_gt, mask_size, mask_size)) < 0.5
    sizes = np.tile(np.array([[height, width]], np.int32), (batch_size, 1))
    return {
        "image": tf.constant(rng.integers(0, 256, size=(batch_size, height, width, 3), dtype=np.uint8)),
        "image_id": tf.range(batch_size, dtype=tf.int64),
        "boxes": tf.constant(boxes), "class_ids": tf.constant(class_ids), "masks": tf.constant(masks),
        "num_instances": tf.fill([batch_size], num_gt),
        "crowd_boxes": tf.zeros((batch_size, max_instances, 4), tf.float32),
        "image_size": tf.constant(sizes), "original_size": tf.constant(sizes),
    }


def _train_row(cfg, rng):
    """One step of `train.py --stage mask_head --mask-rois gt`: the whole detector's forward (its RPN and box
    losses are logged too), RoIs from the jittered ground truth, the mask head trained on the positives."""
    height, width = cfg["image"]
    detector = build_mask_rcnn(NUM_CLASSES, **cfg["model"])
    set_stage(detector, "mask_head")
    trainer = DetectorTrainer(detector, stage="mask_head", mask_rois="gt", box_batch_size=cfg["box_batch_size"],
                              seed=0)
    trainer.compile(optimizer=SegmentationSGD(0.02, momentum=0.9, l2=1e-4))
    batch = synthetic_batch(rng, 2, cfg["image"], cfg["max_instances"], cfg["num_gt"])
    seconds = median_time(lambda: float(trainer.train_on_batch(batch, return_dict=True)["loss"]), warmup=1,
                          repeats=cfg["repeats"])
    return Result("mask-head train step (gt RoIs)", f"2x{height}x{width} {cfg['model_name']}", seconds,
                  throughput=f"{2 / seconds:.2f} img/s",
                  note=f"DetectorTrainer(stage='mask_head', mask_rois='gt'): {cfg['box_batch_size']} RoIs/img "
                       f"sampled in-graph, mask head on the positives; {cfg['num_gt']} GT/img; SegmentationSGD; "
                       f"s/step = median time")


def run(quick=False):
    cfg = _config(quick)
    rng = np.random.default_rng(0)
    results = _roi_align_rows(cfg, rng)
    results += _paste_rows(cfg, rng)
    results.append(_train_row(cfg, rng))
    return results


"""Training targets of the RoI heads, in-graph: RoI sampling and mask targets.

Boxes are [y1, x1, y2, x2] float32 in image pixels (see models.roi_align);
ground truth is padded to M instances per image with class 0.

RoI sampling here stands in for the RPN, which comes later: the candidates are
the ground-truth boxes, jittered copies of them and random boxes. A candidate
whose best IoU with a ground-truth box is >= positive_iou is a positive (that
box's class and mask), otherwise background.
"""
import keras
import tensorflow as tf

from models.roi_align import crop_and_sample


def box_iou(boxes_a, boxes_b):
    """Pairwise IoU. boxes_a [B, N, 4], boxes_b [B, M, 4] float -> [B, N, M] float32 (0 for empty boxes)."""
    a = tf.cast(boxes_a, tf.float32)[:, :, None, :]
    b = tf.cast(boxes_b, tf.float32)[:, None, :, :]
    inter_h = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
    inter_w = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = inter_h * inter_w
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return tf.math.divide_no_nan(inter, area_a + area_b - inter)


def _intersection_over_first(boxes_a, boxes_b):
    """[B, N, M] fraction of each box of boxes_a covered by each box of boxes_b."""
    a = boxes_a[:, :, None, :]
    b = boxes_b[:, None, :, :]
    inter_h = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
    inter_w = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
    return tf.math.divide_no_nan(inter_h * inter_w, (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]))


def sample_rois(gt_boxes, gt_class_ids, image_size, *, num_rois, positive_fraction=0.5, jitter_copies=4,
                center_jitter=0.15, scale_jitter=0.25, num_random=32, positive_iou=0.5, crowd_boxes=None,
                seed=None):
    """Sample num_rois training RoIs per image from jittered ground truth and random boxes.

    gt_boxes: [B, M, 4] float; gt_class_ids: [B, M] int (0 = padding);
    image_size: [B, 2] int (valid height, width). crowd_boxes: optional [B, Mc, 4]
    (zeros = padding): background candidates lying >= 50% inside one are not
    used, since a crowd region is neither object nor background.
    Jitter: centre moved by center_jitter * (h, w) * N(0, 1), size scaled by
    exp(scale_jitter * N(0, 1)). Random boxes: centre uniform in the image, side
    log-uniform in [8, short side], aspect in [1/2, 2].
    Selection: up to round(positive_fraction * num_rois) positives, then
    background, then (if background runs out) more positives; the rest is padding.
    seed: a keras.random.SeedGenerator (inside a tf.function, pass one: it
        advances every step) or an int / None (eager use: a new generator).

    Returns a dict:
      rois [B, R, 4] float32 (zeros for padding),
      class_ids [B, R] int32 (the matched class for positives, 0 for background and padding),
      gt_index [B, R] int32 (matched ground-truth row; meaningful for positives),
      valid [B, R] bool (False for padding only).
    """
    if not isinstance(seed, keras.random.SeedGenerator):
        seed = keras.random.SeedGenerator(seed)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_class_ids = tf.cast(gt_class_ids, tf.int32)
    batch, max_gt = tf.shape(gt_boxes)[0], tf.shape(gt_boxes)[1]
    size = tf.cast(image_size, tf.float32)
    img_h, img_w = size[:, 0, None], size[:, 1, None]
    gt_valid = gt_class_ids > 0

    y1, x1, y2, x2 = tf.unstack(gt_boxes, axis=-1)
    h, w = (y2 - y1)[..., None], (x2 - x1)[..., None]
    noise = keras.random.normal(tf.stack([batch, max_gt, jitter_copies, 4]), seed=seed)
    cy = (y1 + y2)[..., None] / 2 + center_jitter * h * noise[..., 0]
    cx = (x1 + x2)[..., None] / 2 + center_jitter * w * noise[..., 1]
    jh = h * tf.exp(scale_jitter * noise[..., 2])
    jw = w * tf.exp(scale_jitter * noise[..., 3])
    jittered = tf.reshape(tf.stack([cy - jh / 2, cx - jw / 2, cy + jh / 2, cx + jw / 2], -1), [batch, -1, 4])

    u = keras.random.uniform(tf.stack([batch, num_random, 4]), seed=seed)
    short = tf.minimum(img_h, img_w)
    side = tf.exp(tf.math.log(8.0) + u[..., 0] * tf.math.log(tf.maximum(short, 8.0) / 8.0))
    aspect = tf.exp((u[..., 1] - 0.5) * 2.0 * tf.math.log(2.0))
    rh, rw = side * tf.sqrt(aspect), side / tf.sqrt(aspect)
    ry, rx = u[..., 2] * img_h, u[..., 3] * img_w
    random_boxes = tf.stack([ry - rh / 2, rx - rw / 2, ry + rh / 2, rx + rw / 2], -1)

    candidates = tf.concat([gt_boxes, jittered, random_boxes], axis=1)
    limits = tf.stack([img_h, img_w, img_h, img_w], -1)  # [B, 1, 4]
    candidates = tf.clip_by_value(candidates, 0.0, limits)
    cand_h = candidates[..., 2] - candidates[..., 0]
    cand_w = candidates[..., 3] - candidates[..., 1]
    from_gt = tf.concat([gt_valid, tf.repeat(gt_valid, jitter_copies, axis=1),
                         tf.ones([batch, num_random], tf.bool)], axis=1)
    usable = from_gt & (cand_h >= 1.0) & (cand_w >= 1.0)

    iou = tf.where(gt_valid[:, None, :], box_iou(candidates, gt_boxes), -1.0)
    best_iou = tf.reduce_max(iou, axis=2)
    match = tf.argmax(iou, axis=2, output_type=tf.int32)
    positive = usable & (best_iou >= positive_iou)
    negative = usable & (best_iou < positive_iou)
    if crowd_boxes is not None:
        in_crowd = tf.reduce_max(_intersection_over_first(candidates, tf.cast(crowd_boxes, tf.float32)), axis=2)
        negative &= in_crowd < 0.5

    # Priorities: chosen positives > background > surplus positives > unusable.
    key = keras.random.uniform(tf.shape(best_iou), seed=seed)
    positive_key = tf.where(positive, key, -1.0)
    rank = tf.argsort(tf.argsort(positive_key, axis=1, direction="DESCENDING"), axis=1)
    first_positives = positive & (rank < int(round(positive_fraction * num_rois)))
    priority = tf.where(first_positives, 3.0 + key,
                        tf.where(negative, 2.0 + key, tf.where(positive, 1.0 + key, -1.0)))
    top = tf.math.top_k(priority, k=num_rois)
    valid = top.values >= 0.0
    rois = tf.gather(candidates, top.indices, batch_dims=1) * tf.cast(valid, tf.float32)[..., None]
    gt_index = tf.gather(match, top.indices, batch_dims=1)
    is_positive = tf.gather(positive, top.indices, batch_dims=1) & valid
    class_ids = tf.where(is_positive, tf.gather(gt_class_ids, gt_index, batch_dims=1), 0)
    return {"rois": rois, "class_ids": class_ids, "gt_index": gt_index, "valid": valid}


def mask_targets(gt_masks, gt_boxes, rois, gt_index, size=28):
    """Binary mask targets of RoIs, cut from the compact ground-truth masks.

    gt_masks: [B, M, S, S] uint8 0..255 or float 0..1, each instance's mask
        resampled inside its box (data.coco's layout).
    gt_boxes: [B, M, 4] float, the boxes those crops cover (image pixels).
    rois: [B, R, 4] float (image pixels); gt_index: [B, R] int, matched instance.
    Returns [B, R, size, size] float32 0/1: the matched mask cropped to the RoI,
    resampled bilinearly at the centres of a size x size grid, thresholded at
    0.5. Outside its box an instance's mask is 0 (a zero border is added to the
    crop before sampling).
    """
    masks = tf.convert_to_tensor(gt_masks)
    scale = 1.0 / 255.0 if masks.dtype == tf.uint8 else 1.0
    masks = tf.cast(masks, tf.float32) * scale
    batch, count, crop = tf.shape(masks)[0], tf.shape(masks)[1], masks.shape[2]
    padded = crop + 2
    table = tf.reshape(tf.pad(masks, [[0, 0], [0, 0], [1, 1], [1, 1]]), [-1, 1])

    gt_index = tf.cast(gt_index, tf.int32)
    box = tf.gather(tf.cast(gt_boxes, tf.float32), gt_index, batch_dims=1)  # [B, R, 4]
    rois = tf.cast(rois, tf.float32)
    origin = tf.stack([box[..., 0], box[..., 1], box[..., 0], box[..., 1]], -1)
    extent = tf.stack([box[..., 2] - box[..., 0], box[..., 3] - box[..., 1]] * 2, -1)
    # RoI in the padded crop's pixels: the crop spans [1, crop + 1) there.
    in_crop = tf.math.divide_no_nan(rois - origin, extent) * float(crop) + 1.0
    image = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(gt_index))
    base = tf.reshape((image * count + gt_index) * padded * padded, [-1])
    side = tf.fill(tf.shape(base), padded)
    values = crop_and_sample(table, base, side, side, tf.reshape(in_crop, [-1, 4]), size, 1)
    values = tf.reshape(values, tf.concat([tf.shape(rois)[:2], [size, size]], axis=0))
    return tf.cast(values >= 0.5, tf.float32)

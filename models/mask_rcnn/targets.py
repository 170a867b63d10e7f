"""Training targets, in-graph and batched: RPN anchor labels, box-head RoI sampling, mask targets.

Boxes are [y1, x1, y2, x2] float32 in image pixels (see models.roi_align);
ground truth is padded to M instances per image with class 0.

- rpn_targets: anchors matched to the ground truth (IoU >= 0.7 positive,
  < 0.3 negative, each ground truth's best anchors positive), 256 sampled per
  image, up to half positive; regression targets with weights (1, 1, 1, 1).
- box_head_targets: proposals plus the ground-truth boxes, matched at IoU 0.5,
  512 sampled per image, up to 25% positive; class-specific regression
  targets with weights (10, 10, 5, 5). torchvision's RPN and RoI heads'
  training targets, over a batch (matching and sampling: models.mask_rcnn.matching).
- sample_rois: RoIs from jittered ground truth and random boxes, the
  candidates of the mask-head stage on ground-truth RoIs (DetectorTrainer
  mask_rois="gt"), in place of the RPN's proposals.
- positive_rois: the positives of a box_head_targets sample, as one flat list (the mask branch's RoIs).
- mask_targets: the matched instance's mask cut out of each RoI.
Crowd regions (data.coco's crowd_boxes) follow matching.inside_crowd's rule.
"""
import keras
import tensorflow as tf

from models.mask_rcnn.box_coder import BOX_HEAD_WEIGHTS, RPN_WEIGHTS, encode_boxes
from models.mask_rcnn.matching import (
    BELOW_LOW_THRESHOLD,
    box_iou,
    inside_crowd,
    match_boxes,
    sample_balanced,
)
from models.roi_align import crop_and_sample


def _regression_targets(reference_boxes, gt_boxes, matches, weights):
    """Deltas from each reference box [B, N, 4] to its matched ground truth (matches [B, N] >= 0; zeros elsewhere).

    Unmatched references (and padding rows) encode a unit box to itself: their
    targets are 0, never log(0) or x / 0.
    """
    matched = matches >= 0
    boxes = tf.gather(tf.cast(gt_boxes, tf.float32), tf.maximum(matches, 0), batch_dims=1)
    unit = tf.constant([0.0, 0.0, 1.0, 1.0])
    use = matched[..., None]
    return encode_boxes(tf.where(use, boxes, unit), tf.where(use, tf.cast(reference_boxes, tf.float32), unit),
                        weights)


def rpn_targets(anchors, gt_boxes, gt_class_ids, crowd_boxes=None, *, num_samples=256, positive_fraction=0.5,
                high_threshold=0.7, low_threshold=0.3, seed=None):
    """Objectness labels and regression targets of every anchor (torchvision's assign_targets_to_anchors + sampler).

    anchors: [A, 4] float, all levels concatenated (the same for every image).
    gt_boxes: [B, M, 4] float; gt_class_ids: [B, M] int (0 = padding);
    crowd_boxes: optional [B, Mc, 4] float (zeros = padding).
    Matching: IoU >= high_threshold positive, < low_threshold negative,
    between ignored, and each ground truth's best anchors (ties included)
    positive too; an anchor mostly inside a crowd region is never a negative
    (matching.inside_crowd). Sampling: num_samples per image, up to
    int(num_samples * positive_fraction) positives, the rest negatives as
    available (an image without objects gets num_samples negatives).
    seed: a keras.random.SeedGenerator (pass one inside a tf.function) or an int / None.
    Returns a dict:
      labels [B, A] float32: 1 sampled positive, 0 sampled negative, -1 not sampled;
      deltas [B, A, 4] float32: (dy, dx, dh, dw) to the matched ground truth
        (weights (1, 1, 1, 1)); 0 for anchors matched to nothing;
      matches [B, A] int32: the matched ground-truth row, -1 below low_threshold, -2 between (before sampling).
    """
    if not isinstance(seed, keras.random.SeedGenerator):
        seed = keras.random.SeedGenerator(seed)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_valid = tf.cast(gt_class_ids, tf.int32) > 0
    batch = tf.shape(gt_boxes)[0]
    anchors = tf.cast(anchors, tf.float32)
    num_anchors = anchors.shape[0] if anchors.shape[0] is not None else tf.shape(anchors)[0]
    anchors = tf.broadcast_to(anchors[None], [batch, num_anchors, 4])

    matches = match_boxes(anchors, gt_boxes, gt_valid, high_threshold=high_threshold,
                          low_threshold=low_threshold, allow_low_quality_matches=True)
    negative = tf.equal(matches, BELOW_LOW_THRESHOLD)
    if crowd_boxes is not None:
        negative &= ~inside_crowd(anchors, tf.cast(crowd_boxes, tf.float32))
    indices, is_positive, valid = sample_balanced(matches >= 0, negative, num_samples=num_samples,
                                                  positive_fraction=positive_fraction, seed=seed)
    # Per anchor: 2 sampled positive, 1 sampled negative, 0 not sampled (padding slots add 0), minus 1.
    code = tf.where(valid, tf.where(is_positive, 2, 1), 0)
    image = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(indices))
    code = tf.scatter_nd(tf.stack([image, indices], axis=-1), code, [batch, num_anchors])
    return {"labels": tf.cast(code, tf.float32) - 1.0,
            "deltas": _regression_targets(anchors, gt_boxes, matches, RPN_WEIGHTS),
            "matches": matches}


def box_head_targets(proposals, gt_boxes, gt_class_ids, crowd_boxes=None, *, proposal_valid=None, num_samples=512,
                     positive_fraction=0.25, iou_threshold=0.5, seed=None, weights=BOX_HEAD_WEIGHTS):
    """The box head's training RoIs and their targets (torchvision's select_training_samples), batched.

    proposals: [B, P, 4] float (the RPN's; no gradient flows back through them);
    proposal_valid: optional [B, P] bool (default: boxes of positive height and width).
    gt_boxes: [B, M, 4]; gt_class_ids: [B, M] int (0 = padding); crowd_boxes: optional [B, Mc, 4].
    The candidates are the proposals followed by the ground-truth boxes
    (add_gt_proposals; crowd boxes are not added). IoU >= iou_threshold with
    the best ground truth: a positive of its class; below: background, unless
    mostly inside a crowd region (then never sampled). num_samples per image,
    up to int(num_samples * positive_fraction) positives.
    seed: a keras.random.SeedGenerator (pass one inside a tf.function) or an int / None.
    Returns a dict, S = num_samples; positives first, then background, then
    padding, so every positive lies in the first int(num_samples * positive_fraction)
    slots (the mask branch may run on those only):
      rois [B, S, 4] float32 (zeros for padding);
      class_ids [B, S] int32 (the matched class for positives, 0 for background and padding);
      deltas [B, S, 4] float32 (dy, dx, dh, dw) to the matched ground truth, weights (10, 10, 5, 5); 0 if not positive;
      gt_index [B, S] int32 (matched ground-truth row for positives, else 0: mask_targets' input);
      valid [B, S] bool (False for padding only).
    """
    if not isinstance(seed, keras.random.SeedGenerator):
        seed = keras.random.SeedGenerator(seed)
    proposals = tf.stop_gradient(tf.cast(proposals, tf.float32))
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_class_ids = tf.cast(gt_class_ids, tf.int32)
    gt_valid = gt_class_ids > 0
    if proposal_valid is None:
        proposal_valid = (proposals[..., 2] > proposals[..., 0]) & (proposals[..., 3] > proposals[..., 1])
    candidates = tf.concat([proposals, gt_boxes], axis=1)
    candidate_valid = tf.concat([tf.cast(proposal_valid, tf.bool), gt_valid], axis=1)

    matches = match_boxes(candidates, gt_boxes, gt_valid, candidate_valid,
                          high_threshold=iou_threshold, low_threshold=iou_threshold)
    negative = tf.equal(matches, BELOW_LOW_THRESHOLD) & candidate_valid
    if crowd_boxes is not None:
        negative &= ~inside_crowd(candidates, tf.cast(crowd_boxes, tf.float32))
    indices, is_positive, valid = sample_balanced(matches >= 0, negative, num_samples=num_samples,
                                                  positive_fraction=positive_fraction, seed=seed)
    rois = tf.gather(candidates, indices, batch_dims=1) * tf.cast(valid, tf.float32)[..., None]
    gt_index = tf.where(is_positive, tf.gather(matches, indices, batch_dims=1), 0)
    class_ids = tf.where(is_positive, tf.gather(gt_class_ids, gt_index, batch_dims=1), 0)
    deltas = _regression_targets(rois, gt_boxes, tf.where(is_positive, gt_index, -1), weights)
    return {"rois": rois, "class_ids": class_ids, "deltas": deltas, "gt_index": gt_index, "valid": valid}


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
        negative &= ~inside_crowd(candidates, tf.cast(crowd_boxes, tf.float32))

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


def positive_rois(sampled):
    """The positive RoIs of box_head_targets' sample, of the whole batch as one flat list (what the mask branch
    trains on, as torchvision's RoIHeads: a variable number per image).

    sampled: box_head_targets' dict (rois [B, S, 4], class_ids [B, S], gt_index [B, S]).
    Returns a dict of N = max(P, 1) rows, P the batch's number of positives, image-major in slot order:
      image_index [N] int32 (the RoI's image), slot [N] int32 (its row in `sampled`), rois [N, 4] float32,
      class_ids [N] int32 (1..K), gt_index [N] int32 (the matched ground-truth row).
    With no positive at all, slot 0 of image 0 stands in as the one row, with
    class 0 (no weight in the mask loss): the mask head then never runs on an
    empty batch, where a trainable BatchNorm's batch moments would be 0 / 0 and
    turn its moving statistics to NaN (Keras's; torch skips the update).
    """
    positive = sampled["class_ids"] > 0
    first_slot = tf.tensor_scatter_nd_update(tf.zeros_like(positive), [[0, 0]], [True])
    index = tf.cast(tf.where(positive | (first_slot & ~tf.reduce_any(positive))), tf.int32)  # [N, 2]
    return {"image_index": index[:, 0], "slot": index[:, 1], "rois": tf.gather_nd(sampled["rois"], index),
            "class_ids": tf.gather_nd(sampled["class_ids"], index),
            "gt_index": tf.gather_nd(sampled["gt_index"], index)}


def mask_targets(gt_masks, gt_boxes, rois, gt_index, size=28, *, image_index=None):
    """Binary mask targets of RoIs, cut from the compact ground-truth masks.

    gt_masks: [B, M, S, S] uint8 0..255 or float 0..1, each instance's mask
        resampled inside its box (data.coco's layout).
    gt_boxes: [B, M, 4] float, the boxes those crops cover (image pixels).
    rois: [B, R, 4] float (image pixels); gt_index: [B, R] int, matched instance.
    image_index: None, or [N] int32 with rois [N, 4] and gt_index [N]: one flat
        list of RoIs of any images, image_index[i] the image of RoI i.
    Returns [B, R, size, size] (or [N, size, size]) float32 0/1: the matched
    mask cropped to the RoI, resampled bilinearly at the centres of a size x
    size grid, thresholded at 0.5. Outside its box an instance's mask is 0 (a
    zero border is added to the crop before sampling).
    """
    if image_index is None:  # [B, R]: the flat form on B * R RoIs, then back to [B, R, ...]
        shape = tf.shape(gt_index)
        values = mask_targets(gt_masks, gt_boxes, tf.reshape(rois, [-1, 4]), tf.reshape(gt_index, [-1]), size,
                              image_index=tf.repeat(tf.range(shape[0]), shape[1]))
        return tf.reshape(values, tf.concat([shape, [size, size]], axis=0))
    masks = tf.convert_to_tensor(gt_masks)
    scale = 1.0 / 255.0 if masks.dtype == tf.uint8 else 1.0
    masks = tf.cast(masks, tf.float32) * scale
    count, crop = tf.shape(masks)[1], masks.shape[2]
    padded = crop + 2
    table = tf.reshape(tf.pad(masks, [[0, 0], [0, 0], [1, 1], [1, 1]]), [-1, 1])

    gt_index = tf.cast(gt_index, tf.int32)
    image_index = tf.cast(image_index, tf.int32)
    box = tf.gather_nd(tf.cast(gt_boxes, tf.float32), tf.stack([image_index, gt_index], axis=-1))  # [N, 4]
    rois = tf.cast(rois, tf.float32)
    origin = tf.stack([box[..., 0], box[..., 1], box[..., 0], box[..., 1]], -1)
    extent = tf.stack([box[..., 2] - box[..., 0], box[..., 3] - box[..., 1]] * 2, -1)
    # RoI in the padded crop's pixels: the crop spans [1, crop + 1) there.
    in_crop = tf.math.divide_no_nan(rois - origin, extent) * float(crop) + 1.0
    base = (image_index * count + gt_index) * padded * padded
    side = tf.fill(tf.shape(base), padded)
    values = crop_and_sample([table], base, side, side, in_crop, size, 1)
    return tf.cast(values[..., 0] >= 0.5, tf.float32)

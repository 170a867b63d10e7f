"""Matching candidate boxes (anchors, proposals) to ground truth, and balanced sampling: batched, in-graph.

The two small pieces torchvision's RPN and RoI heads share (its _utils.Matcher
and BalancedPositiveNegativeSampler), written over a batch of images with
padding instead of per-image lists, with static shapes (XLA) and seeded
randomness. Boxes are [..., 4] (y1, x1, y2, x2) float in image pixels.

Match codes (as torchvision's Matcher): a matched ground-truth row (>= 0),
BELOW_LOW_THRESHOLD (-1: a negative) or BETWEEN_THRESHOLDS (-2: ignored).
"""
import keras
import tensorflow as tf

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2
# A candidate with at least this fraction of its area inside one crowd region is never a negative.
CROWD_OVERLAP = 0.5


def _intersections(boxes_a, boxes_b):
    """boxes_a [B, N, 4], boxes_b [B, M, 4] -> (intersection areas [B, N, M], area of a [B, N, 1], area of b [B, 1, M])."""
    a = tf.cast(boxes_a, tf.float32)[:, :, None, :]
    b = tf.cast(boxes_b, tf.float32)[:, None, :, :]
    inter_h = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
    inter_w = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter_h * inter_w, area_a, area_b


def box_iou(boxes_a, boxes_b):
    """Pairwise IoU. boxes_a [B, N, 4], boxes_b [B, M, 4] float -> [B, N, M] float32 (0 for empty boxes)."""
    inter, area_a, area_b = _intersections(boxes_a, boxes_b)
    return tf.math.divide_no_nan(inter, area_a + area_b - inter)


def intersection_over_area(boxes_a, boxes_b):
    """[B, N, M] float32: the fraction of each box of boxes_a [B, N, 4] covered by each box of boxes_b [B, M, 4]."""
    inter, area_a, _ = _intersections(boxes_a, boxes_b)
    return tf.math.divide_no_nan(inter, area_a)


def _columns_in_use(valid):
    """Scalar int32: 1 + the last True column of valid [B, M] in any image (0 if none).

    The loops below visit only these columns: data.coco pads ground truth at
    the end, so a batch of images with 7 objects costs 7 columns, not M.
    """
    columns = tf.range(1, tf.shape(valid)[1] + 1)
    return tf.reduce_max(tf.where(valid, columns[None, :], 0))


def _column(x, m):
    """x [B, M, ...] -> [B, 1, ...], column m (a gather: XLA needs the static size 1 that a slice m:m + 1 hides)."""
    return tf.gather(x, m[None], axis=1)


def inside_crowd(boxes, crowd_boxes, min_overlap=CROWD_OVERLAP):
    """[B, N] bool: boxes [B, N, 4] with >= min_overlap of their area inside one crowd box [B, Mc, 4] (zeros = padding).

    The rule for crowd regions (COCO's iscrowd): a crowd region is neither an
    object nor background, so a candidate lying mostly inside one is never
    sampled as a negative; crowd boxes are no ground truth, so nothing is ever
    matched to them as a positive. A candidate matched to a real object stays a
    positive wherever it lies. (torchvision drops crowd annotations, making
    such candidates negatives; Detectron ignored candidates whose
    intersection-over-own-area with a crowd box exceeded 0.7.)
    One crowd box at a time: memory [B, N], not [B, N, Mc].
    """
    boxes = tf.cast(boxes, tf.float32)
    crowd_boxes = tf.cast(crowd_boxes, tf.float32)
    present = (crowd_boxes[..., 2] > crowd_boxes[..., 0]) & (crowd_boxes[..., 3] > crowd_boxes[..., 1])

    def body(m, covered):
        overlap = intersection_over_area(boxes, _column(crowd_boxes, m))[..., 0]
        return m + 1, tf.maximum(covered, tf.where(_column(present, m), overlap, 0.0))

    _, covered = tf.while_loop(lambda m, _: m < _columns_in_use(present), body,
                               (tf.constant(0), tf.zeros(tf.shape(boxes)[:2])))
    return covered >= min_overlap


def match_boxes(candidates, gt_boxes, gt_valid, candidate_valid=None, *, high_threshold, low_threshold,
                allow_low_quality_matches=False):
    """Best ground truth of each candidate by IoU, or a negative code: torchvision's Matcher, batched.

    candidates: [B, N, 4] float (anchors, proposals); gt_boxes: [B, M, 4] float.
    gt_valid: [B, M] bool (False = padding: never matched).
    candidate_valid: optional [B, N] bool (False = padding candidate: it only
        ever gets BELOW_LOW_THRESHOLD, and is never a best match of any ground truth).
    IoU >= high_threshold: the best ground truth's row (the first on ties, as
    torch's max); in [low, high): -2; below low: -1. allow_low_quality_matches:
    every candidate whose IoU with some ground truth equals that ground
    truth's highest IoU (ties included) gets its own best ground truth back,
    as torchvision's set_low_quality_matches_ does; except that a ground truth
    overlapping no candidate at all (highest IoU 0) adds no match here, where
    torchvision would match every candidate.
    One ground truth at a time (a loop over the used columns): memory [B, N],
    not the [B, N, M] IoU matrix, which at 268k anchors and M = 100 would be
    200 MB per image and per temporary.
    Returns [B, N] int32.
    """
    candidates = tf.cast(candidates, tf.float32)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_valid = tf.cast(gt_valid, tf.bool)
    shape = tf.shape(candidates)[:2]
    if candidate_valid is None:
        candidate_valid = tf.ones(shape, tf.bool)
    candidate_valid = tf.cast(candidate_valid, tf.bool)

    def body(m, best, best_gt, is_best):
        usable = candidate_valid & _column(gt_valid, m)
        # -1 keeps padding out of both maxima (a real IoU is >= 0).
        iou = tf.where(usable, box_iou(candidates, _column(gt_boxes, m))[..., 0], -1.0)
        better = iou > best  # strictly: the first ground truth wins ties
        best_gt = tf.where(better, m, best_gt)
        best = tf.maximum(best, iou)
        if allow_low_quality_matches:
            highest = tf.reduce_max(iou, axis=1, keepdims=True)
            is_best |= usable & tf.equal(iou, highest) & (highest > 0.0)
        return m + 1, best, best_gt, is_best

    _, best, best_gt, is_best = tf.while_loop(
        lambda m, *_: m < _columns_in_use(gt_valid), body,
        (tf.constant(0), tf.fill(shape, -1.0), tf.zeros(shape, tf.int32), tf.zeros(shape, tf.bool)))
    matches = tf.where(best >= high_threshold, best_gt,
                       tf.where(best >= low_threshold, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD))
    if allow_low_quality_matches:
        matches = tf.where(is_best, best_gt, matches)
    return tf.where(candidate_valid, matches, BELOW_LOW_THRESHOLD)


def sample_balanced(positive, negative, *, num_samples, positive_fraction, seed):
    """A random subset of positives and negatives of each image: torchvision's BalancedPositiveNegativeSampler.

    positive, negative: [B, N] bool, disjoint (neither = ignored).
    Per image: P = min(#positives, int(num_samples * positive_fraction))
    positives and min(#negatives, num_samples - P) negatives, each a uniformly
    random subset (top-k of uniform keys).
    seed: a keras.random.SeedGenerator (inside a tf.function it advances every step).
    Returns (indices [B, S] int32, is_positive [B, S] bool, valid [B, S] bool),
    S = num_samples: the sampled positives first, then the negatives, then
    padding (valid False, index 0); so every positive lies in the first
    int(num_samples * positive_fraction) slots.
    """
    positive = tf.cast(positive, tf.bool)
    negative = tf.cast(negative, tf.bool)
    max_positives = int(num_samples * positive_fraction)
    count = positive.shape[1]
    key = keras.random.uniform(tf.shape(positive), seed=seed)
    # k is at least 1 (top_k, gather) and at most the candidates; with a static count it stays static (XLA).
    if count is not None:
        k_pos, k_neg = max(min(max_positives, count), 1), max(min(num_samples, count), 1)
    else:
        k_pos = tf.maximum(tf.minimum(max_positives, tf.shape(positive)[1]), 1)
        k_neg = tf.maximum(tf.minimum(num_samples, tf.shape(positive)[1]), 1)
    top_pos = tf.math.top_k(tf.where(positive, key, -1.0), k=k_pos)
    top_neg = tf.math.top_k(tf.where(negative, key, -1.0), k=k_neg)
    num_pos = tf.minimum(tf.reduce_sum(tf.cast(top_pos.values >= 0.0, tf.int32), axis=1, keepdims=True),
                         max_positives)  # [B, 1]
    num_neg = tf.minimum(tf.reduce_sum(tf.cast(top_neg.values >= 0.0, tf.int32), axis=1, keepdims=True),
                         num_samples - num_pos)
    # Slot s holds positive s while s < num_pos, then negative s - num_pos (top_k lists the valid ones first).
    slot = tf.broadcast_to(tf.range(num_samples)[None, :], [tf.shape(positive)[0], num_samples])
    is_positive = slot < num_pos
    valid = slot < num_pos + num_neg
    from_pos = tf.gather(top_pos.indices, tf.minimum(slot, k_pos - 1), batch_dims=1)
    from_neg = tf.gather(top_neg.indices, tf.clip_by_value(slot - num_pos, 0, k_neg - 1), batch_dims=1)
    indices = tf.where(valid, tf.where(is_positive, from_pos, from_neg), 0)
    return indices, is_positive, valid

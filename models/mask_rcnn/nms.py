"""Batched non-maximum suppression with groups (torchvision's batched_nms): one TF op, or one exportable NMS.

torchvision suppresses within groups (FPN levels for proposals, classes for
detections) image by image in Python. Here tf.image.combined_non_max_suppression
does every image of the batch and every group in one op: group g of box n is
scored in column g of `scores`, and a box takes part in a group only where its
score there is above the threshold (so "not in this group" is a score below it).
Suppression: IoU > iou_threshold with a kept box of higher score, as torchvision.

Exporters do not know CombinedNonMaxSuppression (tf2onnx 1.17 leaves it
unconverted, OpenVINO's TF frontend has no rule for it, LiteRT needs a Flex
op). Inside `with portable_nms():` grouped_nms traces the same selection with
one plain NonMaxSuppressionV5 instead (ONNX NonMaxSuppression), using the
coordinate trick torchvision's batched_nms uses when traced for export: each
(image, group)'s boxes are moved to their own cell of the plane, so boxes of
different cells never overlap and one NMS over all of them suppresses only
within cells. The moved coordinates are rounded to float32 again, so an IoU
within ~1e-6 of iou_threshold may decide differently than on the original
boxes (torchvision's trick has the same rounding).
"""
import contextlib

import tensorflow as tf

_portable = [False]  # set by portable_nms(), read when grouped_nms is traced


@contextlib.contextmanager
def portable_nms():
    """Within the block, grouped_nms builds the exportable NMS (_grouped_nms_portable): wrap export tracing in it.

    The choice is made when the graph is traced (Python), so a graph traced
    inside the block keeps the portable NMS when run later.
    """
    previous, _portable[0] = _portable[0], True
    try:
        yield
    finally:
        _portable[0] = previous


def grouped_nms(boxes, scores, *, max_output_size, iou_threshold, score_threshold):
    """Per-group NMS of every image, then the best max_output_size boxes of each image over all groups.

    boxes: [B, N, q, 4] float32 (y1, x1, y2, x2), q = 1 (shared by the groups)
      or G (one box per group).
    scores: [B, N, G] float32; only scores > score_threshold take part.
    Returns boxes [B, M, 4] float32, scores [B, M] float32 (decreasing), groups
    [B, M] int32, valid [B] int32 with M = max_output_size; entries from valid on
    are zero padding.
    Uses tf.image.combined_non_max_suppression, or inside `with portable_nms():`
    the same selection from one NonMaxSuppressionV5 (see the module docstring).
    """
    if _portable[0]:
        return _grouped_nms_portable(boxes, scores, max_output_size=max_output_size, iou_threshold=iou_threshold,
                                     score_threshold=score_threshold)
    # At most max_output_size of a group can be among the best max_output_size overall.
    nmsed_boxes, nmsed_scores, nmsed_groups, valid = tf.image.combined_non_max_suppression(
        boxes, scores, max_output_size_per_class=max_output_size, max_total_size=max_output_size,
        iou_threshold=iou_threshold, score_threshold=score_threshold, pad_per_class=False, clip_boxes=False)
    return nmsed_boxes, nmsed_scores, tf.cast(nmsed_groups, tf.int32), valid


def _grouped_nms_portable(boxes, scores, *, max_output_size, iou_threshold, score_threshold):
    """grouped_nms from one tf.image.non_max_suppression_with_scores over every (image, box, group) candidate.

    Cell c = b * G + g of the B * G (image, group) pairs sits at row c // side,
    column c % side of a side x side grid (side = ceil(sqrt(B * G)): the shifts,
    hence the float32 rounding, stay smaller than in one long row), each cell
    `span` wide: the boxes' coordinate range + 1. The one NMS selects in
    decreasing score, ties to the lower candidate index; each image then keeps
    its first max_output_size selections.
    """
    shape = tf.shape(scores)
    batch, count, groups = shape[0], shape[1], shape[2]
    boxes = tf.broadcast_to(tf.cast(boxes, tf.float32), [batch, count, groups, 4])
    scores = tf.cast(scores, tf.float32)
    cell = tf.range(batch)[:, None] * groups + tf.range(groups)[None, :]  # [B, G]
    side = tf.cast(tf.math.ceil(tf.sqrt(tf.cast(batch * groups, tf.float32))), tf.int32)
    # Only the candidates' coordinates (and 0) set the span: dropped boxes may lie anywhere.
    taking_part = tf.where(scores[..., None] > score_threshold, boxes, 0.0)
    span = tf.reduce_max(taking_part) - tf.reduce_min(taking_part) + 1.0
    shift_yx = tf.cast(tf.stack([cell // side, cell % side], axis=-1), tf.float32) * span  # [B, G, 2]
    moved = boxes + tf.tile(shift_yx, [1, 1, 2])[:, None]  # [B, N, G, 4]

    total = batch * count * groups
    selected, selected_scores = tf.image.non_max_suppression_with_scores(
        tf.reshape(moved, [total, 4]), tf.reshape(scores, [total]), max_output_size=total,
        iou_threshold=iou_threshold, score_threshold=score_threshold)
    # Image b's first max_output_size selections, in order: the largest keys S - position among its own
    # (top_k rather than a scatter: OpenVINO cannot bound a scatter's computed output shape).
    position = tf.range(tf.shape(selected)[0])
    in_image = tf.equal((selected // (count * groups))[None, :], tf.range(batch)[:, None])  # [B, S]
    keys = tf.where(in_image, tf.cast(tf.shape(selected)[0] - position, tf.float32), 0.0)
    keys = tf.pad(keys, [[0, 0], [0, max_output_size]])  # at least max_output_size columns for top_k
    _, first = tf.math.top_k(keys, k=max_output_size)  # [B, M] positions into the selections
    valid = tf.minimum(tf.reduce_sum(tf.cast(in_image, tf.int32), axis=1), max_output_size)
    is_valid = tf.range(max_output_size)[None, :] < valid[:, None]
    first = tf.where(is_valid, first, 0)
    picked = tf.gather(tf.pad(selected, [[0, 1]]), first)  # [B, M] candidates (padding reads candidate 0)
    picked_scores = tf.where(is_valid, tf.gather(tf.pad(selected_scores, [[0, 1]]), first), 0.0)
    picked_boxes = tf.where(is_valid[..., None], tf.gather(tf.reshape(boxes, [total, 4]), picked), 0.0)
    return picked_boxes, picked_scores, tf.where(is_valid, picked % groups, 0), valid

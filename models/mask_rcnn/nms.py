"""Batched non-maximum suppression with groups (torchvision's batched_nms), in one TF op.

torchvision suppresses within groups (FPN levels for proposals, classes for
detections) image by image in Python. Here tf.image.combined_non_max_suppression
does every image of the batch and every group in one op: group g of box n is
scored in column g of `scores`, and a box takes part in a group only where its
score there is above the threshold (so "not in this group" is a score below it).
Suppression: IoU > iou_threshold with a kept box of higher score, as torchvision.
"""
import tensorflow as tf


def grouped_nms(boxes, scores, *, max_output_size, iou_threshold, score_threshold):
    """Per-group NMS of every image, then the best max_output_size boxes of each image over all groups.

    boxes: [B, N, q, 4] float32 (y1, x1, y2, x2), q = 1 (shared by the groups)
      or G (one box per group).
    scores: [B, N, G] float32; only scores > score_threshold take part.
    Returns boxes [B, M, 4] float32, scores [B, M] float32 (decreasing), groups
    [B, M] int32, valid [B] int32 with M = max_output_size; entries from valid on
    are zero padding.
    """
    # At most max_output_size of a group can be among the best max_output_size overall.
    nmsed_boxes, nmsed_scores, nmsed_groups, valid = tf.image.combined_non_max_suppression(
        boxes, scores, max_output_size_per_class=max_output_size, max_total_size=max_output_size,
        iou_threshold=iou_threshold, score_threshold=score_threshold, pad_per_class=False, clip_boxes=False)
    return nmsed_boxes, nmsed_scores, tf.cast(nmsed_groups, tf.int32), valid

"""Box coding: boxes <-> regression deltas relative to reference boxes (anchors or proposals).

One place for the Faster R-CNN parametrisation (Girshick et al. 2014), used by
the RPN (weights (1, 1, 1, 1)) and the box head (weights (10, 10, 5, 5)), as
torchvision's BoxCoder and detectron2's Box2BoxTransform:

    dy = wy * (y_c - ry_c) / rh        dx = wx * (x_c - rx_c) / rw
    dh = wh * log(h / rh)              dw = ww * log(w / rw)

with (ry_c, rx_c, rh, rw) the reference box's centre and size. Sizes are
x2 - x1 (no "+ 1"), centres x1 + w / 2, as torchvision computes them.

Conventions of this project: boxes are [..., 4] (y1, x1, y2, x2) in continuous
image pixels and deltas [..., 4] (dy, dx, dh, dw), the TF Model Garden order.
torchvision orders both x first; its converter permutes its layers' output
channels instead.
"""
import math

import tensorflow as tf

RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
BOX_HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # (wy, wx, wh, ww)
# Predicted log-scales are clipped here before exp: no box grows more than 1000/16 times its reference.
DEFAULT_SCALE_CLIP = math.log(1000.0 / 16)


def _centers_and_sizes(boxes):
    height = boxes[..., 2] - boxes[..., 0]
    width = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * height, boxes[..., 1] + 0.5 * width, height, width


def encode_boxes(boxes, reference_boxes, weights):
    """Deltas that turn each reference box into the matching box.

    boxes, reference_boxes: [..., 4] float (y1, x1, y2, x2), broadcastable;
    reference sizes must be positive (matched boxes too: log of their ratio).
    weights: (wy, wx, wh, ww).
    Returns [..., 4] float32 (dy, dx, dh, dw).
    """
    boxes = tf.cast(boxes, tf.float32)
    reference_boxes = tf.cast(reference_boxes, tf.float32)
    wy, wx, wh, ww = weights
    y, x, h, w = _centers_and_sizes(boxes)
    ry, rx, rh, rw = _centers_and_sizes(reference_boxes)
    return tf.stack([wy * (y - ry) / rh, wx * (x - rx) / rw, wh * tf.math.log(h / rh), ww * tf.math.log(w / rw)],
                    axis=-1)


def decode_boxes(deltas, reference_boxes, weights, *, scale_clip=DEFAULT_SCALE_CLIP):
    """Boxes from deltas: the inverse of encode_boxes, with dh / dw clipped at scale_clip before exp.

    deltas: [..., 4] float (dy, dx, dh, dw); reference_boxes: [..., 4] float
    (y1, x1, y2, x2), broadcastable against deltas.
    Returns [..., 4] float32 (y1, x1, y2, x2).
    """
    deltas = tf.cast(deltas, tf.float32)
    reference_boxes = tf.cast(reference_boxes, tf.float32)
    wy, wx, wh, ww = weights
    ry, rx, rh, rw = _centers_and_sizes(reference_boxes)
    dy, dx = deltas[..., 0] / wy, deltas[..., 1] / wx
    dh = tf.minimum(deltas[..., 2] / wh, scale_clip)
    dw = tf.minimum(deltas[..., 3] / ww, scale_clip)
    y, x = ry + dy * rh, rx + dx * rw
    h, w = tf.exp(dh) * rh, tf.exp(dw) * rw
    return tf.stack([y - 0.5 * h, x - 0.5 * w, y + 0.5 * h, x + 0.5 * w], axis=-1)


def clip_boxes(boxes, image_size):
    """Clips boxes to the image. boxes [B, N, 4] (y1, x1, y2, x2); image_size [B, 2] (height, width)."""
    size = tf.cast(image_size, boxes.dtype)
    limits = tf.concat([size, size], axis=-1)[:, None, :]  # [B, 1, 4]: (h, w, h, w)
    return tf.clip_by_value(boxes, tf.zeros_like(limits), limits)

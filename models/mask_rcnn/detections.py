"""Detections from the box branch's outputs (torchvision's postprocess_detections, batched).

For each RoI and each object class k (the background dropped): the class's
softmax probability and the RoI's box decoded with the class's deltas
(weights (10, 10, 5, 5)), clipped to the image (its size before padding).
Kept: probability > score_threshold, box at least min_size high and wide;
then NMS at nms_threshold within each class and the max_detections best
over all classes. Class ids stay the model's contiguous ids 1..K;
CategoryIds maps them to the dataset's category ids in the graph.
"""
import keras
import tensorflow as tf

from models.mask_rcnn.box_coder import BOX_HEAD_WEIGHTS, clip_boxes, decode_boxes
from models.mask_rcnn.nms import grouped_nms


@keras.saving.register_keras_serializable(package="models")
class Detections(keras.layers.Layer):
    """Call: [class logits [B, R, K + 1], box deltas [B, R, K + 1, 4], rois [B, R, 4] float
    (y1, x1, y2, x2), num_rois [B] int (valid RoIs first), image_sizes [B, 2] int] ->
    [boxes [B, D, 4] float32 (image pixels), class_ids [B, D] int32 (1..K, 0 for padding),
     scores [B, D] float32 (decreasing), num_detections [B] int32], D = max_detections.
    """

    def __init__(self, score_threshold=0.05, nms_threshold=0.5, max_detections=100, min_size=1e-2, **kwargs):
        # Box arithmetic in float32 under every policy: Keras's autocast would hand this layer float16
        # deltas and boxes under mixed_float16 (1 px spacing past 1024 px).
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_detections = int(max_detections)
        self.min_size = float(min_size)

    def call(self, inputs):
        class_logits, box_deltas, rois, num_rois, image_sizes = inputs
        probs = tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1)[:, :, 1:]  # [B, R, K]
        boxes = decode_boxes(box_deltas[:, :, 1:], rois[:, :, None], BOX_HEAD_WEIGHTS)  # [B, R, K, 4]
        shape = tf.shape(boxes)
        boxes = tf.reshape(clip_boxes(tf.reshape(boxes, [shape[0], -1, 4]), image_sizes), shape)
        big_enough = ((boxes[..., 2] - boxes[..., 0] >= self.min_size)
                      & (boxes[..., 3] - boxes[..., 1] >= self.min_size))
        valid_roi = tf.range(tf.shape(rois)[1])[None, :, None] < tf.cast(num_rois, tf.int32)[:, None, None]
        # Dropped candidates score -1, under any threshold.
        scores = tf.where(big_enough & valid_roi, probs, -1.0)
        boxes, scores, classes, valid = grouped_nms(
            boxes, scores, max_output_size=self.max_detections, iou_threshold=self.nms_threshold,
            score_threshold=self.score_threshold)
        is_valid = tf.range(self.max_detections)[None] < valid[:, None]
        return boxes, tf.where(is_valid, classes + 1, 0), scores, valid

    def compute_output_shape(self, input_shapes):
        batch, count = input_shapes[0][0], self.max_detections
        return (batch, count, 4), (batch, count), (batch, count), (batch,)

    def get_config(self):
        return {**super().get_config(), "score_threshold": self.score_threshold,
                "nms_threshold": self.nms_threshold, "max_detections": self.max_detections,
                "min_size": self.min_size}


@keras.saving.register_keras_serializable(package="models")
class CategoryIds(keras.layers.Layer):
    """The dataset's category ids and names, carried in the model (and its .keras file).

    Args:
      category_ids: K ints, the category id of contiguous class k at index k - 1
        (COCO ids for COCO models; 1..K when built without them).
      category_names: K strings.

    Call: class_ids [B, D] int (1..K, 0 = padding) -> category ids [B, D] int32 (0 for padding).
    """

    def __init__(self, category_ids, category_names, **kwargs):
        super().__init__(**kwargs)
        self.category_ids = tuple(int(c) for c in category_ids)
        self.category_names = tuple(str(n) for n in category_names)
        if len(self.category_ids) != len(self.category_names):
            raise ValueError(f"{len(self.category_ids)} category ids but {len(self.category_names)} names")

    def call(self, class_ids):
        table = tf.constant((0, *self.category_ids), tf.int32)
        return tf.gather(table, tf.cast(class_ids, tf.int32))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "category_ids": self.category_ids, "category_names": self.category_names}

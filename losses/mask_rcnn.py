"""Mask R-CNN mask loss: per-pixel binary cross-entropy on the ground-truth class's mask.

The reference (Matterport's mrcnn_mask_loss_graph) computes it in three steps:
  Step 1  merge the batch and RoI dims; permute predictions to [N, num_classes, h, w];
  Step 2  keep only positive RoIs (class id > 0) and, of each, only the channel of
          its ground-truth class;
  Step 3  binary cross-entropy, mean; 0.0 when there is no positive RoI.
Here step 1 reshapes without the permute and step 2 picks the class channel with
a batched gather on the last axis and the positives with a 0/1 weight: the same
values and gradients, without transposing the whole [N, h, w, K] prediction
(the largest tensor of the head), with static shapes (XLA), and with the sum and
count at hand for an exact global mean under tf.distribute.
"""
import keras
import tensorflow as tf

from losses.basic import binary_cross_entropy
from losses.distribute import replica_share_of_mean


def mask_rcnn_mask_sum_and_count(target_masks, target_class_ids, pred_masks, from_logits=False):
    """Sum of the selected per-pixel BCE values and their number.

    target_masks: [batch, num_rois, h, w] float 0/1, zero padded.
    target_class_ids: [batch, num_rois] int; 0 = background or padding.
    pred_masks: [batch, num_rois, h, w, num_classes] probabilities (or logits
        with from_logits=True), any float dtype.
    Returns (total, count): scalar float32 each; count = positive RoIs * h * w.
    """
    pred_masks = tf.convert_to_tensor(pred_masks)
    target_masks = tf.convert_to_tensor(target_masks)

    # Step 1: merge batch and RoI dims.
    class_ids = tf.reshape(tf.cast(target_class_ids, tf.int32), [-1])
    mask_shape = tf.shape(target_masks)
    targets = tf.reshape(target_masks, [-1, mask_shape[2], mask_shape[3]])
    pred_shape = tf.shape(pred_masks)
    preds = tf.reshape(pred_masks, [-1, pred_shape[2], pred_shape[3], pred_shape[4]])

    # Step 2: the ground-truth class's channel of each RoI; only positive RoIs count.
    positive = class_ids > 0
    channel = tf.where(positive, class_ids, tf.zeros_like(class_ids))
    picked = tf.gather(preds, channel, axis=3, batch_dims=1)  # [N, h, w]
    weight = tf.cast(positive, tf.float32)[:, None, None]

    # Step 3: binary cross-entropy over the selected masks.
    bce = binary_cross_entropy(targets, picked, from_logits=from_logits)
    total = tf.reduce_sum(bce * weight)
    count = tf.reduce_sum(weight) * tf.cast(mask_shape[2] * mask_shape[3], tf.float32)
    return total, count


def mask_rcnn_mask_loss(target_masks, target_class_ids, pred_masks, from_logits=False):
    """Mean binary cross-entropy of positive RoIs' ground-truth-class masks.

    target_masks: [batch, num_rois, h, w] float 0/1 (zero padded).
    target_class_ids: [batch, num_rois] int (0 = background/padding).
    pred_masks: [batch, num_rois, h, w, num_classes] probabilities, clipped to
        [1e-7, 1 - 1e-7] as the reference; from_logits=True takes logits and is
        exact for any magnitude (use it for training).
    Returns a scalar float32; 0.0 when there is no positive RoI.
    """
    total, count = mask_rcnn_mask_sum_and_count(target_masks, target_class_ids, pred_masks, from_logits)
    return tf.math.divide_no_nan(total, count)


@keras.saving.register_keras_serializable(package="losses")
class MaskRCNNMaskLoss(keras.losses.Loss):
    """`mask_rcnn_mask_loss` as a Keras loss, exact under tf.distribute.

    y_true: a dict {"masks": [B, R, h, w] float 0/1, "class_ids": [B, R] int};
    y_pred: [B, R, h, w, K] probabilities, or logits with from_logits=True.
    """

    def __init__(self, from_logits=False, name="mask_rcnn_mask_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        total, count = mask_rcnn_mask_sum_and_count(
            y_true["masks"], y_true["class_ids"], y_pred, self.from_logits)
        return replica_share_of_mean(total, count)

    def get_config(self):
        config = super().get_config()
        config.update(from_logits=self.from_logits)
        return config

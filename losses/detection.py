"""Mask R-CNN detection losses: RPN objectness and box regression, box-head classification and box regression.

The reference (torchvision's RegionProposalNetwork.compute_loss and
roi_heads.fastrcnn_loss) computes each in three steps:
  Step 1  concatenate the images' sampled elements (anchors, RoIs) into one batch;
  Step 2  objectness / class: every sampled element; box regression: only the
          sampled positives, the true class's deltas for the box head;
  Step 3  objectness / class: mean over the sampled elements; box regression:
          smooth L1 (beta 1/9) summed, divided by the number of sampled
          elements (positives and negatives) of the whole batch.
Here step 1 keeps the [B, N] layout, step 2 selects with the labels instead of
indexing (static shapes, XLA) and step 3 returns the sum and the count, so that
under tf.distribute the mean is the global one (losses.distribute).

Inputs come from models.mask_rcnn.targets (rpn_targets, box_head_targets);
deltas are (dy, dx, dh, dw).
"""
import keras
import tensorflow as tf

from losses.basic import binary_cross_entropy, categorical_cross_entropy, smooth_l1
from losses.distribute import replica_share_of_mean

# torchvision's beta for both regression losses.
BOX_LOSS_BETA = 1.0 / 9.0


def _sum_where(condition, values):
    return tf.reduce_sum(tf.where(condition, values, 0.0))


def _count(condition):
    return tf.reduce_sum(tf.cast(condition, tf.float32))


def rpn_objectness_sum_and_count(labels, logits):
    """Binary cross-entropy of the sampled anchors' objectness, and their number.

    labels: [B, A] float: 1 sampled positive, 0 sampled negative, -1 not sampled.
    logits: [B, A] float objectness logits (any float dtype).
    Returns (total, count) scalars float32; count = sampled anchors.
    """
    labels = tf.cast(labels, tf.float32)
    sampled = labels >= 0.0
    bce = binary_cross_entropy(tf.maximum(labels, 0.0), logits, from_logits=True)
    return _sum_where(sampled, bce), _count(sampled)


def rpn_box_sum_and_count(labels, target_deltas, pred_deltas, beta=BOX_LOSS_BETA):
    """Smooth L1 of the sampled positive anchors' deltas, summed, and the number of sampled anchors.

    labels: [B, A] float (1 / 0 / -1 as rpn_objectness_sum_and_count);
    target_deltas, pred_deltas: [B, A, 4] float.
    Returns (total, count) scalars float32; count = all sampled anchors (not only positives).
    """
    labels = tf.cast(labels, tf.float32)
    per_anchor = tf.reduce_sum(smooth_l1(target_deltas, pred_deltas, beta), axis=-1)
    return _sum_where(labels > 0.0, per_anchor), _count(labels >= 0.0)


def box_class_sum_and_count(class_ids, logits, valid):
    """Softmax cross-entropy over K + 1 classes of the sampled RoIs, and their number.

    class_ids: [B, S] int (0 = background); logits: [B, S, K + 1] float;
    valid: [B, S] bool (False = padding, left out).
    Returns (total, count) scalars float32.
    """
    valid = tf.cast(valid, tf.bool)
    class_ids = tf.where(valid, tf.cast(class_ids, tf.int32), 0)
    per_roi = categorical_cross_entropy(class_ids, logits, from_logits=True)
    return _sum_where(valid, per_roi), _count(valid)


def box_regression_sum_and_count(class_ids, target_deltas, pred_deltas, valid, beta=BOX_LOSS_BETA):
    """Smooth L1 of the positive RoIs' true-class deltas, summed, and the number of sampled RoIs.

    class_ids: [B, S] int (0 = background); target_deltas: [B, S, 4] float;
    pred_deltas: [B, S, K + 1, 4] or [B, S, 4 * (K + 1)] float, class-specific
        (slot 0 = background, never used); valid: [B, S] bool.
    Returns (total, count) scalars float32; count = valid RoIs (not only positives).
    """
    valid = tf.cast(valid, tf.bool)
    class_ids = tf.cast(class_ids, tf.int32)
    positive = valid & (class_ids > 0)
    pred_deltas = tf.convert_to_tensor(pred_deltas)
    pred_deltas = tf.reshape(pred_deltas, tf.concat([tf.shape(pred_deltas)[:2], [-1, 4]], axis=0))
    picked = tf.gather(pred_deltas, tf.where(positive, class_ids, 0), axis=2, batch_dims=2)  # [B, S, 4]
    per_roi = tf.reduce_sum(smooth_l1(target_deltas, picked, beta), axis=-1)
    return _sum_where(positive, per_roi), _count(valid)


def rpn_objectness_loss(labels, logits):
    """Mean objectness BCE over the sampled anchors (labels [B, A] 1/0/-1, logits [B, A]); 0.0 if none."""
    return tf.math.divide_no_nan(*rpn_objectness_sum_and_count(labels, logits))


def rpn_box_loss(labels, target_deltas, pred_deltas, beta=BOX_LOSS_BETA):
    """Positives' smooth L1 summed / sampled anchors (labels [B, A], deltas [B, A, 4]); 0.0 if none sampled."""
    return tf.math.divide_no_nan(*rpn_box_sum_and_count(labels, target_deltas, pred_deltas, beta))


def box_class_loss(class_ids, logits, valid):
    """Mean softmax CE over the valid RoIs (class_ids [B, S], logits [B, S, K + 1], valid [B, S]); 0.0 if none."""
    return tf.math.divide_no_nan(*box_class_sum_and_count(class_ids, logits, valid))


def box_regression_loss(class_ids, target_deltas, pred_deltas, valid, beta=BOX_LOSS_BETA):
    """Positives' true-class smooth L1 summed / valid RoIs (shapes as box_regression_sum_and_count); 0.0 if none."""
    return tf.math.divide_no_nan(*box_regression_sum_and_count(class_ids, target_deltas, pred_deltas, valid, beta))


class _BetaLoss(keras.losses.Loss):
    """A Loss with a smooth-L1 beta in its config."""

    def __init__(self, beta=BOX_LOSS_BETA, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.beta = float(beta)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package="losses")
class RPNObjectnessLoss(keras.losses.Loss):
    """`rpn_objectness_loss` as a Keras loss, exact under tf.distribute.

    y_true: {"labels": [B, A] 1/0/-1}; y_pred: objectness logits [B, A].
    """

    def __init__(self, name="rpn_objectness_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return replica_share_of_mean(*rpn_objectness_sum_and_count(y_true["labels"], y_pred))


@keras.saving.register_keras_serializable(package="losses")
class RPNBoxLoss(_BetaLoss):
    """`rpn_box_loss` as a Keras loss, exact under tf.distribute.

    y_true: {"labels": [B, A] 1/0/-1, "deltas": [B, A, 4]}; y_pred: predicted deltas [B, A, 4].
    """

    def __init__(self, beta=BOX_LOSS_BETA, name="rpn_box_loss", **kwargs):
        super().__init__(beta=beta, name=name, **kwargs)

    def call(self, y_true, y_pred):
        return replica_share_of_mean(*rpn_box_sum_and_count(y_true["labels"], y_true["deltas"], y_pred, self.beta))


@keras.saving.register_keras_serializable(package="losses")
class BoxClassLoss(keras.losses.Loss):
    """`box_class_loss` as a Keras loss, exact under tf.distribute.

    y_true: {"class_ids": [B, S] int, "valid": [B, S] bool or 0/1}; y_pred: class logits [B, S, K + 1].
    """

    def __init__(self, name="box_class_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return replica_share_of_mean(*box_class_sum_and_count(y_true["class_ids"], y_pred, y_true["valid"]))


@keras.saving.register_keras_serializable(package="losses")
class BoxRegressionLoss(_BetaLoss):
    """`box_regression_loss` as a Keras loss, exact under tf.distribute.

    y_true: {"class_ids": [B, S] int, "deltas": [B, S, 4], "valid": [B, S] bool or 0/1};
    y_pred: class-specific deltas [B, S, K + 1, 4] or [B, S, 4 * (K + 1)].
    """

    def __init__(self, beta=BOX_LOSS_BETA, name="box_regression_loss", **kwargs):
        super().__init__(beta=beta, name=name, **kwargs)

    def call(self, y_true, y_pred):
        return replica_share_of_mean(*box_regression_sum_and_count(
            y_true["class_ids"], y_true["deltas"], y_pred, y_true["valid"], self.beta))

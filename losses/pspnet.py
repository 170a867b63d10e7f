"""PSPNet loss: pixelwise softmax cross-entropy that ignores a label, main + 0.4 * aux.

The reference TF code computes it in three steps:
  Step 1  reshape logits to [N, C] and labels (resized to the logits' size) to [N];
  Step 2  gather the pixels whose label is <= num_classes - 1 (drops 255 "ignore");
  Step 3  sparse softmax cross-entropy on them, averaged.
The function below follows those steps. Step 2 keeps the selection as a 0/1
weight instead of a `tf.gather` with a data-dependent index list: the value and
gradient are identical, but shapes stay static (XLA can compile it, and the
gradient is a dense multiply instead of a scatter), and the sum and count stay
available for an exact global mean under tf.distribute. Step 3 is the sparse
softmax cross-entropy written as logsumexp minus the label's logit, with its
gradient spelled out (see _weighted_softmax_cross_entropy_sum for why).
"""
import keras
import tensorflow as tf

from losses.distribute import replica_share_of_mean

AUX_WEIGHT = 0.4  # PSPNet paper: weight of the auxiliary (res4b22) loss


def _labels_as_bhw(labels):
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 4:  # [B, H, W, 1]
        labels = tf.squeeze(labels, axis=-1)
    if labels.shape.rank != 3:
        raise ValueError(f"labels must be [B, H, W] or [B, H, W, 1], got shape {labels.shape}")
    return labels


def _match_sizes(labels, logits, upsample_logits):
    """Bring labels [B, H, W] and logits [B, h, w, C] to one spatial size."""
    static_label_size, static_logit_size = labels.shape[1:3], logits.shape[1:3]
    if static_label_size.is_fully_defined() and static_logit_size.is_fully_defined():
        if static_label_size == static_logit_size:
            return labels, logits
        same_size = None
    else:
        same_size = tf.reduce_all(tf.equal(tf.shape(labels)[1:3], tf.shape(logits)[1:3]))

    def resize():
        if upsample_logits:
            # Bilinear: logits are smooth scores; the loss is then taken at full label resolution.
            return labels, tf.image.resize(logits, tf.shape(labels)[1:3], method="bilinear")
        # Nearest neighbour: a resized label must stay a class id (the reference's prepare_label).
        resized = tf.image.resize(labels[..., None], tf.shape(logits)[1:3], method="nearest")[..., 0]
        return tf.cast(resized, labels.dtype), logits

    if same_size is None:
        return resize()
    # Sizes known only at run time (full-image evaluation): resize only when they differ.
    return tf.cond(same_size, lambda: (labels, logits), resize)


def pixelwise_softmax_sum_and_count(labels, logits, num_classes, ignore_label=255, upsample_logits=False):
    """Sum of per-pixel softmax cross-entropies over valid pixels, and their number.

    labels: [B, H, W] or [B, H, W, 1] int (or float holding integers); pixels equal
        to ignore_label, or outside [0, num_classes), are ignored.
    logits: [B, h, w, C] float (any float dtype; computed in float32).
    Returns (total, count): scalar float32 each.
    """
    labels = _labels_as_bhw(labels)
    logits = tf.convert_to_tensor(logits)
    if logits.dtype != tf.float32:
        logits = tf.cast(logits, tf.float32)
    labels, logits = _match_sizes(labels, logits, upsample_logits)

    # Step 1: reshape to one row per pixel.
    raw_prediction = tf.reshape(logits, [-1, num_classes])
    raw_gt = tf.reshape(tf.cast(labels, tf.int32), [-1])

    # Step 2: select the pixels whose label is a real class (<= num_classes - 1, as the
    # reference), and not ignore_label (which matters only if it lies inside [0, num_classes)).
    valid = (raw_gt >= 0) & (raw_gt <= num_classes - 1) & (raw_gt != ignore_label)
    # Ignored pixels get class 0 only so the op sees a legal id; their weight is 0.
    gt = tf.where(valid, raw_gt, tf.zeros_like(raw_gt))
    weight = tf.cast(valid, tf.float32)

    # Step 3: pixelwise softmax cross-entropy, summed over the selected pixels.
    return _weighted_softmax_cross_entropy_sum(raw_prediction, gt, weight), tf.reduce_sum(weight)


@tf.custom_gradient
def _weighted_softmax_cross_entropy_sum(logits, labels, weight):
    """sum_i weight_i * (logsumexp(logits_i) - logits_i[labels_i]); logits [N, C] float32, labels [N] int32.

    The same value and gradient as tf.nn.sparse_softmax_cross_entropy_with_logits, but that fused op
    also computes and writes its [N, C] gradient in the forward pass. Here the forward pass is one
    stable logsumexp and the gradient, (softmax - one_hot) * weight, is computed only when asked
    for: 3x faster forward and 1.4x faster forward+backward (BENCHMARKS.md).
    """
    log_normalizer = tf.reduce_logsumexp(logits, axis=-1)
    label_logits = tf.gather(logits, labels, axis=1, batch_dims=1)
    total = tf.reduce_sum((log_normalizer - label_logits) * weight)

    def gradient(upstream):
        probabilities = tf.exp(logits - log_normalizer[:, None])
        one_hot = tf.one_hot(labels, tf.shape(logits)[-1], dtype=logits.dtype)
        return (probabilities - one_hot) * (weight * upstream)[:, None], None, None

    return total, gradient


def pixelwise_softmax_loss(labels, logits, num_classes, ignore_label=255, upsample_logits=False):
    """PSPNet's pixelwise softmax loss: mean cross-entropy over non-ignored pixels.

    labels: [B, H, W] or [B, H, W, 1] int class ids; ignore_label (255) and any
        id outside [0, num_classes) are left out.
    logits: [B, h, w, C] float. If (h, w) != (H, W), labels are resized to the
        logits with nearest neighbour, or, with upsample_logits=True, logits are
        resized to the labels bilinearly.
    Returns a scalar float32; 0.0 (not NaN) when no pixel is valid.
    """
    total, count = pixelwise_softmax_sum_and_count(labels, logits, num_classes, ignore_label, upsample_logits)
    return tf.math.divide_no_nan(total, count)


def pspnet_loss(labels, main_logits, aux_logits, num_classes, ignore_label=255, aux_weight=AUX_WEIGHT,
                upsample_logits=False):
    """Main-branch loss + aux_weight * auxiliary-branch (res4b22) loss; scalar float32.

    labels: [B, H, W] (or [..., 1]) int; main_logits, aux_logits: [B, h, w, C] float.
    """
    main = pixelwise_softmax_loss(labels, main_logits, num_classes, ignore_label, upsample_logits)
    aux = pixelwise_softmax_loss(labels, aux_logits, num_classes, ignore_label, upsample_logits)
    return main + aux_weight * aux


@keras.saving.register_keras_serializable(package="losses")
class PixelwiseSoftmaxCrossEntropy(keras.losses.Loss):
    """`pixelwise_softmax_loss` for `compile`, exact under tf.distribute.

    Use one per output; for PSPNet:
        loss={"main": PixelwiseSoftmaxCrossEntropy(19), "aux": PixelwiseSoftmaxCrossEntropy(19)},
        loss_weights={"main": 1.0, "aux": 0.4}

    Each replica returns its sum over valid pixels divided by the global number
    of valid pixels (see losses/distribute.py), so 2 replicas take the same
    step as 1 device on the same global batch.
    """

    def __init__(self, num_classes, ignore_label=255, upsample_logits=False,
                 name="pixelwise_softmax_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.upsample_logits = bool(upsample_logits)

    def call(self, y_true, y_pred):
        total, count = pixelwise_softmax_sum_and_count(
            y_true, y_pred, self.num_classes, self.ignore_label, self.upsample_logits)
        # A scalar return is not rescaled by Keras, so this is the whole normalisation.
        return replica_share_of_mean(total, count)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, ignore_label=self.ignore_label,
                      upsample_logits=self.upsample_logits)
        return config

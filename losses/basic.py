"""Basic loss definitions: L2, smooth L1, binary and categorical cross-entropy, sigmoid, softmax.

Pure functions on tensors (TF ops), element- or sample-wise: they do not reduce
over the batch, so callers choose the reduction (and, under tf.distribute, the
normaliser). They accept float16/bfloat16 inputs and compute in float32, since
logs and exponentials of half-precision values lose too much for a loss.
"""
import tensorflow as tf

# Clip for log(p) of probabilities, the same epsilon Keras uses.
EPSILON = 1e-7


def _as_float32(x):
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float32 else tf.cast(x, tf.float32)


def sigmoid(x):
    """Logistic function 1 / (1 + exp(-x)), element-wise; stable for large |x|."""
    return tf.math.sigmoid(x)


def softmax(x, axis=-1):
    """Normalised exponential along `axis`.

    exp(x - max(x)) / sum(exp(x - max(x))): subtracting the maximum keeps every
    exponent <= 0, so nothing overflows for logits of any magnitude.
    """
    x = tf.convert_to_tensor(x)
    shifted = x - tf.stop_gradient(tf.reduce_max(x, axis=axis, keepdims=True))
    exp = tf.exp(shifted)
    return exp / tf.reduce_sum(exp, axis=axis, keepdims=True)


def l2_loss(y_true, y_pred, axis=-1):
    """Euclidean (L2) loss per sample: 0.5 * sum((y_pred - y_true)^2) over `axis`.

    The factor 1/2 is the convention of Caffe's EuclideanLoss and tf.nn.l2_loss,
    so the gradient is simply (y_pred - y_true).

    y_true, y_pred: [..., D] float. Returns [...] float32.
    """
    diff = _as_float32(y_pred) - _as_float32(y_true)
    return 0.5 * tf.reduce_sum(tf.square(diff), axis=axis)


def smooth_l1(y_true, y_pred, beta):
    """Element-wise smooth L1 (Huber / beta): 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta, d = y_pred - y_true.

    As torch.nn.functional.smooth_l1_loss(reduction="none"); beta > 0.
    y_true, y_pred: [...] float. Returns [...] float32.
    """
    diff = tf.abs(_as_float32(y_pred) - _as_float32(y_true))
    return tf.where(diff < beta, 0.5 * tf.square(diff) / beta, diff - 0.5 * beta)


def binary_cross_entropy(y_true, y_pred, from_logits=False):
    """Element-wise binary cross-entropy (log loss), -[y log p + (1 - y) log(1 - p)].

    y_true: [...] float in [0, 1]. y_pred: [...] probabilities in [0, 1], clipped to
    [EPSILON, 1 - EPSILON] so log never sees 0 (as the reference's K.binary_crossentropy);
    with from_logits=True, y_pred are logits and the loss is computed as
    max(x, 0) - x*y + log(1 + exp(-|x|)), exact and finite for any logit.
    Returns [...] float32.
    """
    y_true = _as_float32(y_true)
    y_pred = _as_float32(y_pred)
    if from_logits:
        return tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=y_pred)
    p = tf.clip_by_value(y_pred, EPSILON, 1.0 - EPSILON)
    return -(y_true * tf.math.log(p) + (1.0 - y_true) * tf.math.log(1.0 - p))


def categorical_cross_entropy(y_true, y_pred, from_logits=False, axis=-1):
    """Multi-class cross-entropy per sample, -sum_c y_c log p_c.

    y_true: either one-hot / soft targets with the shape of y_pred ([..., C] float),
    or sparse class ids with one dimension fewer ([...] int). y_pred: [..., C]
    probabilities (clipped to [EPSILON, 1]) or, with from_logits=True, logits
    (log-softmax, stable for any magnitude). Returns [...] float32.
    """
    y_pred = _as_float32(y_pred)
    y_true = tf.convert_to_tensor(y_true)
    sparse = y_true.shape.rank == y_pred.shape.rank - 1
    if sparse and axis not in (-1, y_pred.shape.rank - 1):
        raise ValueError("sparse labels need the class axis last")
    if from_logits:
        if sparse:
            return tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.cast(y_true, tf.int32), logits=y_pred)
        return tf.nn.softmax_cross_entropy_with_logits(
            labels=_as_float32(y_true), logits=y_pred, axis=axis)
    log_p = tf.math.log(tf.clip_by_value(y_pred, EPSILON, 1.0))
    if sparse:
        return -tf.gather(log_p, tf.cast(y_true, tf.int32), axis=-1, batch_dims=y_true.shape.rank)
    return -tf.reduce_sum(_as_float32(y_true) * log_p, axis=axis)

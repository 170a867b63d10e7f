"""Loss benchmarks: ours vs Keras's SparseCategoricalCrossentropy(ignore_class) vs the literal reference code."""
import numpy as np
import tensorflow as tf
import keras

import losses
from benchmarks.harness import Result, median_time


def literal_pixelwise(labels, logits, num_classes):
    """The reference's code as written: reshape, tf.where + gather, sparse softmax CE, mean."""
    raw_prediction = tf.reshape(logits, [-1, num_classes])
    raw_gt = tf.reshape(labels, [-1])
    indices = tf.squeeze(tf.where(tf.less_equal(raw_gt, num_classes - 1)), 1)
    gt = tf.cast(tf.gather(raw_gt, indices), tf.int32)
    prediction = tf.gather(raw_prediction, indices)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(logits=prediction, labels=gt))


def literal_mask_loss(target_masks, target_class_ids, pred_masks):
    """Matterport's mrcnn_mask_loss_graph as written (transpose, gather_nd, clipped BCE)."""
    target_class_ids = tf.reshape(target_class_ids, (-1,))
    mask_shape = tf.shape(target_masks)
    target_masks = tf.reshape(target_masks, (-1, mask_shape[2], mask_shape[3]))
    pred_shape = tf.shape(pred_masks)
    pred_masks = tf.reshape(pred_masks, (-1, pred_shape[2], pred_shape[3], pred_shape[4]))
    pred_masks = tf.transpose(pred_masks, [0, 3, 1, 2])
    positive_ix = tf.where(target_class_ids > 0)[:, 0]
    positive_class_ids = tf.cast(tf.gather(target_class_ids, positive_ix), tf.int64)
    indices = tf.stack([positive_ix, positive_class_ids], axis=1)
    y_true = tf.gather(target_masks, positive_ix)
    y_pred = tf.gather_nd(pred_masks, indices)
    loss = keras.ops.binary_crossentropy(y_true, y_pred)
    return tf.reduce_mean(loss)


def _time_pair(loss_fn, args, differentiate_arg, repeats):
    """(forward seconds, forward+backward seconds) of a compiled loss call."""
    forward = tf.function(loss_fn)

    @tf.function
    def forward_backward(*a):
        with tf.GradientTape() as tape:
            tape.watch(a[differentiate_arg])
            value = loss_fn(*a)
        return value, tape.gradient(value, a[differentiate_arg])

    fwd = median_time(lambda: forward(*args).numpy(), warmup=2, repeats=repeats)
    both = median_time(lambda: [t.numpy() for t in forward_backward(*args)], warmup=2, repeats=repeats)
    return fwd, both


def run(quick=False):
    results = []
    num_classes = 19
    shapes = [(2, 32, 32)] if quick else [(8, 90, 90), (8, 713, 713)]
    repeats = 3 if quick else 5
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    for shape in shapes:
        rng = np.random.default_rng(0)
        labels_np = rng.integers(0, num_classes, size=shape).astype(np.int32)
        labels_np[rng.random(shape) < 0.1] = 255
        labels = tf.constant(labels_np)
        logits = tf.constant(rng.normal(size=shape + (num_classes,)).astype(np.float32))
        candidates = {
            "ours": lambda l, x: losses.pixelwise_softmax_loss(l, x, num_classes),
            "keras_ignore_class": lambda l, x: keras_loss(l, x),
            "literal_gather": lambda l, x: literal_pixelwise(l, x, num_classes),
        }
        times = {name: _time_pair(fn, (labels, logits), 1, repeats) for name, fn in candidates.items()}
        size = "x".join(map(str, shape + (num_classes,)))
        for phase, index in (("fwd", 0), ("fwd+bwd", 1)):
            best_other = min(times[n][index] for n in candidates if n != "ours")
            for name in candidates:
                results.append(Result(
                    f"pixelwise_loss[{name}] {phase}", size, times[name][index],
                    ratio=times[name][index] / best_other if name == "ours" else None,
                    target="<= 1.05" if name == "ours" else "",
                    note="ours / fastest alternative" if name == "ours" else ""))

    mask_shape = (2, 8, 28, 28, 5) if quick else (16, 200, 28, 28, 81)
    rng = np.random.default_rng(1)
    b, r, h, w, k = mask_shape
    masks = tf.constant((rng.random((b, r, h, w)) > 0.5).astype(np.float32))
    class_ids_np = rng.integers(1, k, size=(b, r)).astype(np.int32)
    class_ids_np[:, r // 3:] = 0  # a third positive, as after RoI sampling
    class_ids = tf.constant(class_ids_np)
    probs = tf.constant(rng.random(mask_shape).astype(np.float32))
    candidates = {
        "ours": lambda m, c, p: losses.mask_rcnn_mask_loss(m, c, p),
        "literal_reference": literal_mask_loss,
    }
    times = {name: _time_pair(fn, (masks, class_ids, probs), 2, repeats) for name, fn in candidates.items()}
    size = "x".join(map(str, mask_shape))
    for phase, index in (("fwd", 0), ("fwd+bwd", 1)):
        for name in candidates:
            ratio = times["ours"][index] / times["literal_reference"][index] if name == "ours" else None
            results.append(Result(f"mask_loss[{name}] {phase}", size, times[name][index], ratio=ratio,
                                  target="<= 1.05" if name == "ours" else "",
                                  note="ours / reference" if name == "ours" else ""))
    return results

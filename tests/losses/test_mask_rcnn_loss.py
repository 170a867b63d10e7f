"""mask_rcnn_mask_loss against a literal float64 loop over RoIs."""
import numpy as np
import pytest
import tensorflow as tf

import losses
from loss_references import mask_rcnn_mask_loss as reference

RTOL = 1e-5


def _batch(seed, batch=2, rois=5, size=6, classes=4):
    rng = np.random.default_rng(seed)
    masks = (rng.random((batch, rois, size, size)) > 0.5).astype(np.float32)
    class_ids = rng.integers(1, classes, size=(batch, rois)).astype(np.int32)
    class_ids[:, -2:] = 0  # zero padding at the end, as the reference's inputs
    masks[:, -2:] = 0.0
    logits = (rng.normal(size=(batch, rois, size, size, classes)) * 2).astype(np.float32)
    probs = (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    return masks, class_ids, logits, probs


def test_probabilities_match_reference():
    masks, ids, _, probs = _batch(0)
    got = losses.mask_rcnn_mask_loss(target_masks=masks, target_class_ids=ids, pred_masks=probs)
    assert got.shape == () and got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), reference(masks, ids, probs), rtol=RTOL)


def test_logits_match_reference():
    masks, ids, logits, _ = _batch(1)
    got = losses.mask_rcnn_mask_loss(target_masks=masks, target_class_ids=ids, pred_masks=logits, from_logits=True)
    np.testing.assert_allclose(got.numpy(), reference(masks, ids, logits, from_logits=True), rtol=RTOL)


def test_non_square_masks_and_one_roi_per_image():
    rng = np.random.default_rng(2)
    masks = (rng.random((3, 1, 4, 7)) > 0.5).astype(np.float32)
    ids = np.array([[2], [0], [1]], np.int32)
    logits = rng.normal(size=(3, 1, 4, 7, 3)).astype(np.float32)
    got = losses.mask_rcnn_mask_loss(masks, ids, logits, from_logits=True)
    np.testing.assert_allclose(got.numpy(), reference(masks, ids, logits, from_logits=True), rtol=RTOL)


@pytest.mark.parametrize("from_logits", [False, True])
def test_no_positive_roi_gives_zero_not_nan(from_logits):
    masks, ids, logits, probs = _batch(3)
    pred = logits if from_logits else probs
    got = losses.mask_rcnn_mask_loss(masks, np.zeros_like(ids), pred, from_logits=from_logits)
    assert got.numpy() == 0.0


def test_gradient_only_flows_to_positive_rois_ground_truth_channel():
    masks, ids, logits, _ = _batch(4)
    x = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = losses.mask_rcnn_mask_loss(masks, ids, x, from_logits=True)
    grad = tape.gradient(loss, x).numpy()
    selected = np.zeros(logits.shape, bool)
    for b, r in zip(*np.nonzero(ids)):
        selected[b, r, :, :, ids[b, r]] = True
    assert np.all(grad[~selected] == 0.0)
    # d/dz of mean BCE-with-logits = (sigmoid(z) - t) / count
    count = selected.sum()
    sig = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    want = (sig - masks[..., None]) / count
    np.testing.assert_allclose(grad[selected], want[selected], rtol=1e-4, atol=1e-9)


def test_extreme_logits_finite_loss_and_gradients():
    masks, ids, logits, _ = _batch(5)
    x = tf.Variable(np.where(logits > 0, 100.0, -100.0).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = losses.mask_rcnn_mask_loss(masks, ids, x, from_logits=True)
    assert np.isfinite(loss.numpy())
    assert np.all(np.isfinite(tape.gradient(loss, x).numpy()))
    np.testing.assert_allclose(loss.numpy(), reference(masks, ids, x.numpy(), from_logits=True), rtol=RTOL)
    # probabilities saturated at exactly 0 and 1 are clipped, not log(0)
    saturated = np.where(logits > 0, 1.0, 0.0).astype(np.float32)
    assert np.isfinite(losses.mask_rcnn_mask_loss(masks, ids, saturated).numpy())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_predictions(dtype):
    masks, ids, logits, _ = _batch(6)
    half = tf.cast(logits, dtype)
    got = losses.mask_rcnn_mask_loss(masks, ids, half, from_logits=True)
    assert got.dtype == tf.float32
    held = tf.cast(half, tf.float32).numpy()
    np.testing.assert_allclose(got.numpy(), reference(masks, ids, held, from_logits=True), rtol=RTOL)


def test_loss_class_takes_a_dict_target_and_compiles_under_xla():
    masks, ids, logits, _ = _batch(7)
    loss = losses.MaskRCNNMaskLoss(from_logits=True)
    y_true = {"masks": masks, "class_ids": ids}
    want = reference(masks, ids, logits, from_logits=True)
    np.testing.assert_allclose(loss(y_true, logits).numpy(), want, rtol=RTOL)
    compiled = tf.function(lambda t, p: loss(t, p), jit_compile=True)
    np.testing.assert_allclose(compiled(y_true, logits).numpy(), want, rtol=RTOL)

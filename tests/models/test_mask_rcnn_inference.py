"""Mask R-CNN inference: class prediction, class-picked masks, pasting masks into the image.

References: hand-computed softmax/sigmoid values, a NumPy float64 paste written
as Detectron2's GPU paste does it (bilinear sampling of the unpadded mask, zero
outside it, at pixel centres), and boxes whose pasted pixels are known.
"""
import numpy as np
import pytest
import tensorflow as tf

from models.mask_rcnn.inference import PickMaskChannel, PredictClass, paste_masks, pick_mask_channel


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_predicted_class_skips_background_and_scores_with_the_full_softmax():
    logits = np.array([[[5.0, 1.0, 3.0, 2.0], [0.0, 0.0, 0.0, 4.0], [0.0, 2.0, 2.0, 1.0]]], np.float32)
    class_ids, scores = PredictClass()(logits)
    np.testing.assert_array_equal(class_ids, [[2, 3, 1]])  # ties go to the lower id
    probs = _softmax(logits.astype(np.float64))
    np.testing.assert_allclose(scores, [[probs[0, 0, 2], probs[0, 1, 3], probs[0, 2, 1]]], rtol=1e-6)


def test_picking_selects_each_rois_channel():
    # Channel k of RoI r holds the constant 10 * r + k: the picked map tells which channel was read.
    rois, classes = 3, 5
    values = 10.0 * np.arange(rois)[:, None] + np.arange(classes + 1)[None, :]
    logits = np.broadcast_to(values[None, :, None, None, :], (1, rois, 4, 4, classes + 1)).astype(np.float32) / 10
    class_ids = np.array([[4, 1, 5]], np.int32)
    picked = PickMaskChannel()([logits, class_ids]).numpy()
    expected = 1 / (1 + np.exp(-(10.0 * np.arange(rois) + class_ids[0]) / 10))
    np.testing.assert_allclose(picked, np.broadcast_to(expected[None, :, None, None], picked.shape), rtol=1e-6)
    np.testing.assert_array_equal(pick_mask_channel(logits, class_ids), picked)


def _paste_reference(mask, box, height, width, threshold=0.5):
    """float64: sample the mask bilinearly at every pixel centre, zero outside the mask (grid_sample, zeros)."""
    h, w = mask.shape
    y1, x1, y2, x2 = box
    out = np.zeros((height, width))
    for r in range(height):
        v = (r + 0.5 - y1) / (y2 - y1) * h - 0.5
        for c in range(width):
            u = (c + 0.5 - x1) / (x2 - x1) * w - 0.5
            v0, u0 = int(np.floor(v)), int(np.floor(u))
            total = 0.0
            for dv, du in ((0, 0), (0, 1), (1, 0), (1, 1)):
                i, j = v0 + dv, u0 + du
                if 0 <= i < h and 0 <= j < w:
                    total += (1 - abs(v - i)) * (1 - abs(u - j)) * mask[i, j]
            out[r, c] = total
    return out >= threshold


def test_paste_matches_reference():
    rng = np.random.default_rng(0)
    masks = rng.uniform(size=(4, 14, 10))
    boxes = np.array([[2.3, 3.1, 15.8, 20.4], [-4.0, -3.0, 9.5, 7.0], [10.0, 12.0, 30.0, 40.0], [5, 5, 6.5, 6.2]])
    pasted = paste_masks(masks.astype(np.float32), boxes.astype(np.float32), (20, 24)).numpy()
    assert pasted.shape == (4, 20, 24) and pasted.dtype == bool
    for n in range(4):
        expected = _paste_reference(masks[n], boxes[n], 20, 24)
        # float32 vs float64 may differ only where the value sits at the threshold.
        assert (pasted[n] != expected).sum() <= 1, n


def test_full_mask_pastes_exactly_the_pixels_whose_centres_are_in_the_box():
    boxes = np.array([[2.0, 3.0, 6.0, 8.0], [1.2, 0.7, 9.8, 4.1]], np.float32)
    pasted = paste_masks(np.ones((2, 28, 28), np.float32), boxes, (12, 10)).numpy()
    centres_y, centres_x = np.arange(12) + 0.5, np.arange(10) + 0.5
    for box, got in zip(boxes, pasted):
        inside = ((centres_y >= box[0]) & (centres_y < box[2]))[:, None] & \
                 ((centres_x >= box[1]) & (centres_x < box[3]))[None, :]
        np.testing.assert_array_equal(got, inside)


def test_paste_handles_no_instances_and_empty_boxes():
    assert paste_masks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), (5, 6)).shape == (0, 5, 6)
    pasted = paste_masks(np.ones((1, 28, 28), np.float32), np.array([[3.0, 3.0, 3.0, 5.0]], np.float32), (8, 8))
    assert not pasted.numpy().any()


def test_paste_is_one_batched_computation():
    """No per-instance Python loop: it traces once for any number of instances."""
    traced = tf.function(lambda m, b: paste_masks(m, b, (16, 16)),
                         input_signature=[tf.TensorSpec([None, 28, 28]), tf.TensorSpec([None, 4])])
    for n in (1, 7):
        out = traced(tf.ones([n, 28, 28]), tf.tile([[2.0, 2.0, 10.0, 12.0]], [n, 1]))
        assert out.shape == (n, 16, 16)
    assert traced.experimental_get_tracing_count() == 1

"""Mask R-CNN inference: class prediction, class-picked masks, pasting masks into the image, their RLEs.

References: hand-computed softmax/sigmoid values, NumPy float64 pastes written
as Detectron2's GPU paste does it (bilinear sampling of the unpadded mask, zero
outside it, at pixel centres: a per-pixel loop and a whole-image matrix form),
boxes whose pasted pixels are known, pycocotools' encode of the dense masks, and
torchvision's own paste_masks_in_image for the torchvision_compatible option.
"""
import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils

from benchmarks.mask_rcnn import blob_masks
from models.mask_rcnn.paste import PastedMasks, paste_masks
from models.mask_rcnn.roi_heads import PickMaskChannel, PredictClass, pick_mask_channel


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
    pasted = paste_masks(masks.astype(np.float32), boxes.astype(np.float32), (20, 24)).dense()
    assert pasted.shape == (4, 20, 24) and pasted.dtype == bool
    for n in range(4):
        expected = _paste_reference(masks[n], boxes[n], 20, 24)
        # float32 vs float64 may differ only where the value sits at the threshold.
        assert (pasted[n] != expected).sum() <= 1, n


def test_full_mask_pastes_exactly_the_pixels_whose_centres_are_in_the_box():
    boxes = np.array([[2.0, 3.0, 6.0, 8.0], [1.2, 0.7, 9.8, 4.1]], np.float32)
    pasted = paste_masks(np.ones((2, 28, 28), np.float32), boxes, (12, 10)).dense()
    centres_y, centres_x = np.arange(12) + 0.5, np.arange(10) + 0.5
    for box, got in zip(boxes, pasted):
        inside = ((centres_y >= box[0]) & (centres_y < box[2]))[:, None] & \
                 ((centres_x >= box[1]) & (centres_x < box[3]))[None, :]
        np.testing.assert_array_equal(got, inside)


def test_paste_handles_no_instances_and_empty_boxes():
    none = paste_masks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), (5, 6))
    assert len(none) == 0 and none.dense().shape == (0, 5, 6) and none.rle() == []
    # Empty boxes (one edge on a pixel centre, of zero width or height), an inverted one, non-finite ones.
    boxes = np.array([[3.5, 3.0, 3.5, 5.0], [1.0, 2.5, 6.0, 2.5], [4, 6, 2, 7], [np.nan, 1, 5, 6], [1, 1, np.inf, 6]],
                     np.float32)
    pasted = paste_masks(np.ones((len(boxes), 28, 28), np.float32), boxes, (8, 8))
    assert len(pasted) == len(boxes) and not pasted.dense().any()
    assert pasted.rle() == mask_utils.encode(np.zeros((8, 8, len(boxes)), np.uint8, order="F"))


def _paste_values_reference(mask, box, height, width):
    """float64 [H, W]: the whole image, every pixel centre sampled bilinearly in the mask, 0 outside it.

    Pixel r reads mask row index (r + 0.5 - y1) / (y2 - y1) * h - 0.5 with weight max(0, 1 - |index - i|) on
    row i (same along x): the bordered-mask convention of paste_masks written the other way round.
    """
    h, w = mask.shape
    y1, x1, y2, x2 = np.asarray(box, np.float64)
    if y2 <= y1 or x2 <= x1:
        return np.zeros((height, width))
    rows = (np.arange(height) + 0.5 - y1) / (y2 - y1) * h - 0.5
    cols = (np.arange(width) + 0.5 - x1) / (x2 - x1) * w - 0.5
    wy = np.maximum(0.0, 1.0 - np.abs(rows[:, None] - np.arange(h)[None, :]))
    wx = np.maximum(0.0, 1.0 - np.abs(cols[:, None] - np.arange(w)[None, :]))
    return wy @ mask.astype(np.float64) @ wx.T


def _random_boxes(rng, count, height, width):
    """Boxes of every kind paste_masks must handle: fractional, crossing or past every image border,
    whole-image and larger, thinner than a pixel, empty and inverted."""
    y = np.sort(rng.uniform(-0.3 * height, 1.3 * height, (count, 2)), axis=1)
    x = np.sort(rng.uniform(-0.3 * width, 1.3 * width, (count, 2)), axis=1)
    boxes = np.stack([y[:, 0], x[:, 0], y[:, 1], x[:, 1]], axis=1)
    special = [[0, 0, height, width], [-3.5, -2.2, height + 4.1, width + 1.7], [2.2, 3.1, 2.6, 3.3],
               [1.0, 1.0, 1.0, 6.0], [5.0, 4.0, 3.0, 9.0], [height + 2, 0, height + 9, width],
               [-9, -9, -1.5, -2.5], [0.0, width - 1.2, height, width + 0.4], [height - 0.6, 0, height + 3, 4.5]]
    return np.concatenate([boxes, special]).astype(np.float32)


def _masks(kind, rng, count, shape):
    """[count, *shape] float32 masks: "noise" (uniform, many threshold crossings per column), "blob" (smooth,
    like a trained head's), or "flat" (all ones, all zeros, and halves of ones: pixels exactly at some
    thresholds)."""
    if kind == "noise":
        return rng.random((count, *shape)).astype(np.float32)
    if kind == "blob":
        return blob_masks(rng, count, max(shape))[:, :shape[0], :shape[1]]
    masks = np.zeros((count, *shape), np.float32)
    masks[::3] = 1.0
    masks[1::3, :, :shape[1] // 2] = 1.0
    return masks


@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("kind", ["noise", "blob", "flat"])
@pytest.mark.parametrize("mask_shape, image_size",
                         [((28, 28), (37, 53)), ((14, 10), (20, 24)), ((5, 7), (9, 6)), ((28, 28), (300, 451))])
def test_paste_thresholds_the_float64_reference(mask_shape, image_size, kind, threshold):
    """A pixel is on iff its reference value >= threshold, except within 1e-5 of the threshold (the crossings
    are solved in floating point), and such pixels are rare; rle() and areas() agree with dense()."""
    rng = np.random.default_rng(sum(mask_shape) + image_size[0])
    height, width = image_size
    boxes = _random_boxes(rng, 40, height, width)
    masks = _masks(kind, rng, len(boxes), mask_shape)
    pasted = paste_masks(masks, boxes, image_size, threshold)
    dense = pasted.dense()
    assert dense.shape == (len(boxes), height, width) and dense.dtype == bool
    near = 0
    for got, mask, box in zip(dense, masks, boxes):
        reference = _paste_values_reference(mask, box, height, width)
        close = np.abs(reference - threshold) < 1e-5
        np.testing.assert_array_equal(got[~close], reference[~close] >= threshold, err_msg=str(box))
        near += close.sum()
    # Exact hits come from the flat masks (e.g. a value of 1 x a weight of 0.5); the rest is chance.
    assert near <= (1e-3 if kind == "flat" else 2e-5) * dense.size + 10, near
    assert pasted.rle() == _encode(dense)
    np.testing.assert_array_equal(pasted.areas(), dense.sum(axis=(1, 2)))


def test_paste_takes_tensors_and_rejects_a_zero_threshold():
    masks = np.random.default_rng(1).random((3, 28, 28)).astype(np.float32)
    boxes = np.array([[1.5, 2.0, 9.0, 14.2], [0, 0, 12, 16], [4, 4, 5, 5]], np.float32)
    from_tensors = paste_masks(tf.constant(masks), tf.constant(boxes), (12, 16))
    np.testing.assert_array_equal(from_tensors.dense(), paste_masks(masks, boxes, (12, 16)).dense())
    with pytest.raises(ValueError, match="threshold"):
        paste_masks(masks, boxes, (12, 16), threshold=0.0)


def _encode(dense):
    """pycocotools' RLEs of [N, H, W] 0/1 masks."""
    return mask_utils.encode(np.asfortranarray(dense.transpose(1, 2, 0).astype(np.uint8)))


@pytest.mark.parametrize("image_size", [(1, 1), (1, 7), (6, 1), (7, 9), (32, 24)])
def test_rle_from_runs_equals_pycocotools_encode_of_the_dense_masks(image_size):
    """Masks in a rectangle at every border, spanning whole columns or the whole image (runs going on into the
    next column), empty, all zeros, all ones; then paste_masks' runs for boxes of every kind."""
    rng = np.random.default_rng(image_size[0] * 100 + image_size[1])
    height, width = image_size
    dense = np.zeros((200, height, width), bool)
    for mask in dense:
        top, left = rng.integers(0, height + 1), rng.integers(0, width + 1)
        if rng.random() < 0.25:
            top, left = (0, 0) if rng.random() < 0.5 else (0, left)  # whole image / whole columns
            rows, cols = height, rng.integers(0, width - left + 1) if left else width
        else:
            rows, cols = rng.integers(0, height - top + 1), rng.integers(0, width - left + 1)
        mask[top:top + rows, left:left + cols] = rng.random((rows, cols)) < rng.choice([0.0, 1.0, 0.5, 0.9])
    pasted = PastedMasks.from_dense(dense)
    assert all(np.all(np.diff(b) > 0) and len(b) % 2 == 0 for b in pasted.boundaries)
    np.testing.assert_array_equal(pasted.dense(), dense)
    assert pasted.rle() == _encode(dense)
    np.testing.assert_array_equal(pasted.areas(), dense.sum(axis=(1, 2)))
    boxes = _random_boxes(rng, 30, height, width)
    for kind in ("noise", "flat"):
        pasted = paste_masks(_masks(kind, rng, len(boxes), (8, 8)), boxes, image_size)
        assert pasted.rle() == _encode(pasted.dense())


@pytest.mark.parametrize("kind", ["noise", "blob"])
@pytest.mark.parametrize("mask_size, threshold", [(28, 0.5), (14, 0.3)])
def test_torchvision_compatible_paste_equals_torchvision(kind, mask_size, threshold):
    # torchvision's own paste_masks_in_image (boxes x first), thresholded as its users do (> threshold), on
    # boxes inside the image as its detections are (clipped): fractional, tiny, flat, on the borders.
    from torchvision.models.detection.roi_heads import paste_masks_in_image
    import torch

    rng = np.random.default_rng(5)
    height, width = 61, 83
    boxes = np.clip(_random_boxes(rng, 60, height, width), 0, [height, width, height, width])
    boxes = boxes[(boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])]
    masks = _masks(kind, rng, len(boxes), (mask_size, mask_size))
    expected = paste_masks_in_image(torch.from_numpy(masks)[:, None],
                                    torch.from_numpy(np.ascontiguousarray(boxes[:, [1, 0, 3, 2]])),
                                    (height, width))[:, 0].numpy() > threshold
    pasted = paste_masks(masks, boxes, (height, width), threshold, torchvision_compatible=True)
    dense = pasted.dense()
    # The same pixels, up to values within float rounding of the threshold.
    assert (dense != expected).sum() <= 2, np.flatnonzero((dense != expected).any(axis=(1, 2)))
    assert pasted.rle() == _encode(dense)
    # The default grid is not torchvision's: the option is what makes them agree.
    assert (paste_masks(masks, boxes, (height, width), threshold).dense() != expected).sum() > 50

"""Mask R-CNN training targets: mask targets cut from compact masks, RoI sampling.

References: masks whose content is known analytically (a box's left half),
NumPy IoU written here, hand-computed sample positions.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from models.mask_rcnn.targets import box_iou, mask_targets, sample_rois

GT_BOX = np.array([8.0, 16.0, 40.0, 48.0], np.float32)  # 32 x 32 pixels


def _left_half_crop(size=56):
    crop = np.zeros((size, size), np.uint8)
    crop[:, : size // 2] = 255
    return crop


def _numpy_iou(a, b):
    ih = np.maximum(0, np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]))
    iw = np.maximum(0, np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]))
    inter = ih * iw
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def test_mask_target_of_the_gt_box_itself():
    masks = _left_half_crop()[None, None]
    target = mask_targets(masks, GT_BOX[None, None], GT_BOX[None, None], np.zeros((1, 1), np.int32), 28)
    expected = np.zeros((28, 28))
    expected[:, :14] = 1.0  # columns 0..13 sample crop columns < 28, the filled half
    np.testing.assert_array_equal(target[0, 0], expected)


def test_mask_targets_of_shifted_and_scaled_rois_follow_the_object():
    """Target pixel (i, j) is 1 iff its sample point lies in the object: rows [8, 40), columns [16, 32)."""
    rng = np.random.default_rng(0)
    y1 = rng.uniform(0, 30, 12)
    x1 = rng.uniform(0, 40, 12)
    rois = np.stack([y1, x1, y1 + rng.uniform(8, 50, 12), x1 + rng.uniform(8, 50, 12)], 1).astype(np.float32)
    rois = np.concatenate([rois, [[8, 0, 40, 64], [8, 32, 40, 48]]]).astype(np.float32)
    masks = _left_half_crop()[None, None]
    target = mask_targets(masks, GT_BOX[None, None], rois[None], np.zeros((1, len(rois)), np.int32), 28)[0]
    for roi, got in zip(rois, target.numpy()):
        ys = roi[0] + (np.arange(28) + 0.5) * (roi[2] - roi[0]) / 28
        xs = roi[1] + (np.arange(28) + 0.5) * (roi[3] - roi[1]) / 28
        inside = ((ys >= 8) & (ys <= 40))[:, None] & ((xs >= 16) & (xs <= 32))[None, :]
        # Within a third of a pixel of the object's edge the resampled crop is ambiguous: skip those.
        near = (np.min(np.abs(ys[:, None] - [8, 40]), 1) < 0.3)[:, None] | \
               (np.min(np.abs(xs[:, None] - [16, 32]), 1) < 0.3)[None, :]
        np.testing.assert_array_equal(got[~near], inside[~near].astype(np.float32))
    # Hand-computed: RoI [8, 0, 40, 64] samples x = (j + 0.5) * 64 / 28, inside [16, 32] for j = 7..13.
    expected = np.zeros((28, 28))
    expected[:, 7:14] = 1
    np.testing.assert_array_equal(target[-2], expected)
    assert not target[-1].numpy().any()  # the right half of the box holds nothing


def test_gt_index_selects_the_instance_and_float_masks_match_uint8():
    full = np.full((56, 56), 255, np.uint8)
    masks = np.stack([_left_half_crop(), full])[None]  # [1, 2, 56, 56]
    boxes = np.stack([GT_BOX, GT_BOX])[None]
    rois = np.stack([GT_BOX, GT_BOX])[None]
    target = mask_targets(masks, boxes, rois, np.array([[1, 0]], np.int32), 28)
    assert target[0, 0].numpy().all()
    assert target[0, 1, :, :14].numpy().all() and not target[0, 1, :, 14:].numpy().any()
    as_float = mask_targets(masks.astype(np.float32) / 255, boxes, rois, np.array([[1, 0]], np.int32), 28)
    np.testing.assert_array_equal(as_float, target)
    # Soft values threshold at 0.5.
    soft = mask_targets(np.full((1, 1, 56, 56), 0.49, np.float32), GT_BOX[None, None], GT_BOX[None, None],
                        np.zeros((1, 1), np.int32), 28)
    assert not soft.numpy().any()


def test_box_iou_against_numpy():
    rng = np.random.default_rng(1)
    a = np.sort(rng.uniform(0, 50, (2, 6, 4)).reshape(2, 6, 2, 2), axis=2).transpose(0, 1, 3, 2).reshape(2, 6, 4)
    b = np.sort(rng.uniform(0, 50, (2, 3, 4)).reshape(2, 3, 2, 2), axis=2).transpose(0, 1, 3, 2).reshape(2, 3, 4)
    for i in range(2):
        np.testing.assert_allclose(box_iou(a, b)[i], _numpy_iou(a[i], b[i]), rtol=1e-5)


@pytest.fixture
def scene():
    gt_boxes = np.zeros((2, 4, 4), np.float32)
    gt_classes = np.zeros((2, 4), np.int32)
    gt_boxes[0, :3] = [[10, 10, 50, 40], [30, 60, 90, 120], [5, 100, 25, 150]]
    gt_classes[0, :3] = [2, 5, 1]
    gt_boxes[1, :1] = [[20, 20, 80, 100]]
    gt_classes[1, :1] = [3]
    return gt_boxes, gt_classes, np.array([[96, 160], [128, 128]], np.int32)


def test_sampled_rois_are_labelled_by_iou(scene):
    gt_boxes, gt_classes, image_size = scene
    num_rois = 32  # <= 1 + 4 jittered + 32 random candidates of the one-object image
    out = {k: v.numpy() for k, v in sample_rois(gt_boxes, gt_classes, image_size, num_rois=num_rois,
                                                 positive_fraction=0.25, seed=0).items()}
    assert out["rois"].shape == (2, num_rois, 4)
    for b in range(2):
        count = int((gt_classes[b] > 0).sum())
        valid, classes, rois = out["valid"][b], out["class_ids"][b], out["rois"][b]
        assert valid.all()
        assert np.all(rois[:, 2] <= image_size[b, 0]) and np.all(rois[:, 3] <= image_size[b, 1])
        assert np.all(rois >= 0) and np.all(rois[:, 2] - rois[:, 0] >= 1) and np.all(rois[:, 3] - rois[:, 1] >= 1)
        iou = _numpy_iou(rois.astype(np.float64), gt_boxes[b, :count].astype(np.float64))
        positive = classes > 0
        assert 1 <= positive.sum() <= round(0.25 * num_rois)
        index = out["gt_index"][b][positive]
        assert np.all(index < count)
        np.testing.assert_allclose(iou[positive, index], iou[positive].max(1), rtol=1e-5)
        assert np.all(iou[positive, index] >= 0.5 - 1e-6)
        np.testing.assert_array_equal(classes[positive], gt_classes[b, index])
        assert np.all(iou[~positive].max(1) < 0.5 + 1e-6)


def test_sampling_fills_with_surplus_positives_then_padding_and_skips_crowds(scene):
    gt_boxes, gt_classes, image_size = scene
    # Image 1 lies entirely in a crowd region: no background RoI may come from it.
    crowd = np.zeros((2, 1, 4), np.float32)
    crowd[1, 0] = [0, 0, 128, 128]
    out = sample_rois(gt_boxes, gt_classes, image_size, num_rois=12, positive_fraction=0.25, jitter_copies=2,
                      num_random=4, crowd_boxes=crowd, seed=1)
    valid, classes = out["valid"].numpy()[1], out["class_ids"].numpy()[1]
    # 1 ground truth + 2 jittered copies at most: positives only, then padding.
    assert np.all(classes[valid] == 3) and 1 <= valid.sum() <= 3
    assert not out["rois"].numpy()[1][~valid].any() and not classes[~valid].any()
    # Image 0 has 3 + 6 + 4 = 13 candidates for 12 RoIs: all used, with more positives than
    # round(0.25 * 12) = 3 since there is too little background to fill the rest.
    assert out["valid"].numpy()[0].all() and (out["class_ids"].numpy()[0] > 0).sum() > 3


def test_sampling_and_targets_compile_under_xla(scene):
    gt_boxes, gt_classes, image_size = scene
    masks = np.tile(_left_half_crop()[None, None], (2, 4, 1, 1))
    seed = keras.random.SeedGenerator(0)

    @tf.function(jit_compile=True)
    def step(boxes, classes, size, masks):
        out = sample_rois(boxes, classes, size, num_rois=16, seed=seed)
        return out, mask_targets(masks, boxes, out["rois"], out["gt_index"], 28)

    first, targets = step(gt_boxes, gt_classes, image_size, masks)
    second, _ = step(gt_boxes, gt_classes, image_size, masks)
    assert targets.shape == (2, 16, 28, 28)
    assert (first["class_ids"].numpy() > 0).any()
    # The seed generator advances: another draw next step.
    assert not np.array_equal(first["rois"], second["rois"])

"""Detector training targets: matching, balanced sampling, RPN and box-head targets.

References: torchvision's own Matcher, RegionProposalNetwork.assign_targets_to_anchors,
RoIHeads.select_training_samples and BoxCoder on the same inputs (torchvision
boxes are (x1, y1, x2, y2), deltas (dx, dy, dw, dh)); counts derived from
torchvision's labels; hand-built crowd and empty-image cases.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from models.mask_rcnn.matching import box_iou, match_boxes, sample_balanced
from models.mask_rcnn.targets import box_head_targets, rpn_targets

XY = [1, 0, 3, 2]  # (y1, x1, y2, x2) <-> (x1, y1, x2, y2), and (dy, dx, dh, dw) <-> (dx, dy, dw, dh)


def _random_boxes(rng, count, extent, min_size=4.0, max_size=40.0):
    y, x = rng.uniform(0, extent, (2, count))
    h, w = rng.uniform(min_size, max_size, (2, count))
    return np.stack([y, x, y + h, x + w], axis=1).astype(np.float32)


def _torch_boxes(boxes):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(boxes, np.float32)[:, XY]))


def _integer_boxes(rng, count, extent=16, max_size=10):
    y, x = rng.integers(0, extent, (2, count))
    h, w = rng.integers(1, max_size, (2, count))
    return np.stack([y, x, y + h, x + w], axis=1).astype(np.float32)


@pytest.mark.parametrize("high, low, low_quality", [(0.7, 0.3, True), (0.7, 0.3, False), (0.5, 0.5, False)])
def test_match_boxes_equals_torchvision_matcher(high, low, low_quality):
    from torchvision.ops import box_iou as torch_box_iou
    rng = np.random.default_rng(0)
    # Integer boxes drawn from a small pool: many exact ties, within each ground truth's best and across
    # ground truths (a duplicated ground truth: the first wins, as torch's max).
    pool = _integer_boxes(rng, 25)
    candidates = pool[rng.integers(0, 25, (2, 60))]
    gt = np.stack([pool[rng.integers(0, 25, 6)] for _ in range(2)])
    gt[0, 4] = gt[0, 2]
    gt_valid = np.array([[True, False, True, True, True, False], [True, True, False, False, False, False]])
    gt[0, 1] = candidates[0, 0]  # padding must lose even with an IoU of 1
    # Ground truth 1 of image 1 lies apart; its best candidates tie three ways at IoU 1/3 (ignored, unless
    # low-quality matches restore them).
    gt[1, 1] = [40, 40, 44, 44]
    candidates[1, 10:13] = [[40, 42, 44, 46], [40, 42, 44, 46], [42, 40, 46, 44]]
    gt[1, 0] = candidates[1, 20] + 1.0
    candidate_valid = np.ones((2, 60), bool)
    candidate_valid[1, 45:] = False
    got = match_boxes(candidates, gt, gt_valid, candidate_valid, high_threshold=high, low_threshold=low,
                      allow_low_quality_matches=low_quality).numpy()
    matcher = det_utils.Matcher(high, low, allow_low_quality_matches=low_quality)
    for b in range(2):
        columns = np.flatnonzero(gt_valid[b])
        rows = np.flatnonzero(candidate_valid[b])
        quality = torch_box_iou(_torch_boxes(gt[b][columns]), _torch_boxes(candidates[b][rows]))
        assert (quality.max(dim=1).values > 0).all()  # the case where both rules agree (see next test)
        assert ((quality == quality.max(dim=1, keepdim=True).values).sum(dim=1) > 1).any()  # tied best candidates
        expected = matcher(quality).numpy()
        expected = np.where(expected >= 0, columns[np.maximum(expected, 0)], expected)
        np.testing.assert_array_equal(got[b, rows], expected)
        assert np.all(got[b, ~candidate_valid[b]] == -1)
    assert (got >= 0).sum() > 5 and (got == -1).sum() > 10


def test_a_ground_truth_overlapping_nothing_adds_no_low_quality_match():
    # torchvision would match every candidate to something here (all tie at IoU 0): a documented difference.
    candidates = np.array([[[0, 0, 4, 4], [0, 10, 4, 14], [10, 10, 14, 14], [20, 20, 24, 24]]], np.float32)
    gt = np.array([[[10, 11, 14, 15], [50, 50, 60, 60]]], np.float32)
    got = match_boxes(candidates, gt, np.ones((1, 2), bool), high_threshold=0.7, low_threshold=0.3,
                      allow_low_quality_matches=True).numpy()
    np.testing.assert_array_equal(got, [[-1, -1, 0, -1]])


def test_box_iou_equals_torchvision():
    from torchvision.ops import box_iou as torch_box_iou
    rng = np.random.default_rng(1)
    a, b = _random_boxes(rng, 30, 60), _random_boxes(rng, 7, 60)
    np.testing.assert_allclose(box_iou(a[None], b[None]).numpy()[0],
                               torch_box_iou(_torch_boxes(a), _torch_boxes(b)).numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("num_pos, num_neg, expected_pos, expected_neg", [
    (300, 900, 128, 384),  # enough of both: 25% positive
    (40, 900, 40, 472),    # few positives: negatives fill up
    (300, 100, 128, 100),  # few negatives: padding at the end
    (0, 0, 0, 0),          # nothing to sample
])
def test_balanced_sampling_counts_and_sets(num_pos, num_neg, expected_pos, expected_neg):
    rng = np.random.default_rng(2)
    n = 1500
    kind = np.zeros(n, np.int32)  # 0 ignored, 1 positive, 2 negative
    order = rng.permutation(n)
    kind[order[:num_pos]] = 1
    kind[order[num_pos:num_pos + num_neg]] = 2
    kind = np.stack([kind, kind[::-1]])
    indices, is_positive, valid = (t.numpy() for t in sample_balanced(
        kind == 1, kind == 2, num_samples=512, positive_fraction=0.25, seed=keras.random.SeedGenerator(3)))
    for b in range(2):
        assert is_positive[b].sum() == expected_pos and (valid[b] & ~is_positive[b]).sum() == expected_neg
        # Positives first, then negatives, then padding.
        assert np.all(np.diff(is_positive[b].astype(int)) <= 0) and np.all(np.diff(valid[b].astype(int)) <= 0)
        chosen = indices[b][valid[b]]
        assert len(np.unique(chosen)) == len(chosen)
        assert np.all(kind[b][indices[b][is_positive[b]]] == 1)
        assert np.all(kind[b][indices[b][valid[b] & ~is_positive[b]]] == 2)
        assert not indices[b][~valid[b]].any()


def test_balanced_sampling_is_seeded_and_random():
    positive = np.zeros((1, 1000), bool)
    positive[0, :500] = True

    def draw(generator):
        indices, is_positive, _ = sample_balanced(positive, ~positive, num_samples=64, positive_fraction=0.5,
                                                  seed=generator)
        return set(indices.numpy()[0][is_positive.numpy()[0]])

    first = keras.random.SeedGenerator(7)
    a, b = draw(first), draw(first)
    assert a != b  # the generator advances
    assert draw(keras.random.SeedGenerator(7)) == a  # the same seed, the same draw
    # Over many draws every positive gets picked about as often (uniform subsets): 32 of 500 per draw.
    generator = keras.random.SeedGenerator(8)
    counts = np.zeros(500)
    for _ in range(60):
        counts[list(draw(generator))] += 1
    assert counts.mean() == pytest.approx(60 * 32 / 500) and counts.max() < 15


def test_replicas_sample_independently(two_replica_strategy):
    # Both replicas see the same image; sharing one generator state, they must still draw different subsets.
    positive = np.zeros((1, 1000), bool)
    positive[0, :500] = True
    with two_replica_strategy.scope():
        generator = keras.random.SeedGenerator(3)
    per_replica = two_replica_strategy.run(
        lambda: sample_balanced(positive, ~positive, num_samples=64, positive_fraction=0.5, seed=generator)[0])
    first, second = (v.numpy() for v in two_replica_strategy.experimental_local_results(per_replica))
    assert set(first[0]) != set(second[0])


def _scene(rng):
    """Two images, 64 x 96: 3 objects in image 0, none in image 1 (padding rows with class 0)."""
    boxes = np.zeros((2, 4, 4), np.float32)
    boxes[0, :3] = [[4, 6, 30, 40], [20, 50, 60, 90], [35, 10, 50, 22]]
    classes = np.array([[3, 1, 2, 0], [0, 0, 0, 0]], np.int32)
    return boxes, classes


def _anchors(rng, count=600):
    anchors = _random_boxes(rng, count, 80, min_size=6, max_size=45)
    objects = _scene(rng)[0][0, :3]
    near = count // 5
    anchors[:near] = objects[np.arange(near) % 3] + rng.normal(0, 2.0, (near, 4))  # plenty near the objects
    return anchors


def test_rpn_targets_equal_torchvision():
    rng = np.random.default_rng(4)
    boxes, classes = _scene(rng)
    anchors = _anchors(rng)
    out = {k: v.numpy() for k, v in rpn_targets(anchors, boxes, classes, num_samples=64, seed=5).items()}
    rpn = RegionProposalNetwork(None, None, fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=64,
                                positive_fraction=0.5, pre_nms_top_n={"training": 1}, post_nms_top_n={"training": 1},
                                nms_thresh=0.7)
    targets = [{"boxes": _torch_boxes(boxes[b][classes[b] > 0])} for b in range(2)]
    labels, matched = rpn.assign_targets_to_anchors([_torch_boxes(anchors)] * 2, targets)
    for b in range(2):
        tv_labels = labels[b].numpy()
        ours = np.select([out["matches"][b] >= 0, out["matches"][b] == -1], [1.0, 0.0], -1.0)
        np.testing.assert_array_equal(ours, tv_labels)
        positive = tv_labels == 1
        expected = rpn.box_coder.encode_single(matched[b], _torch_boxes(anchors)).numpy()[:, XY]
        np.testing.assert_allclose(out["deltas"][b][positive], expected[positive], rtol=1e-5, atol=1e-5)
        assert not out["deltas"][b][~positive].any()
        # Sampled: min(available, 32) positives, negatives up to 64 in all, all drawn from torchvision's sets.
        sampled = out["labels"][b]
        num_pos = min(positive.sum(), 32)
        assert (sampled == 1).sum() == num_pos and (sampled == 0).sum() == min((tv_labels == 0).sum(), 64 - num_pos)
        assert np.all(tv_labels[sampled == 1] == 1) and np.all(tv_labels[sampled == 0] == 0)
    assert (out["labels"][0] == 1).sum() == 32  # the scene really has more positives than the sampler keeps
    assert (out["labels"][1] == 0).sum() == 64  # no objects: all negatives


def test_rpn_crowd_regions_are_never_sampled_but_objects_in_them_are():
    rng = np.random.default_rng(6)
    boxes, classes = _scene(rng)
    anchors = _anchors(rng, 300)
    crowd = np.zeros((2, 2, 4), np.float32)
    crowd[:, 0] = [0, 0, 64, 48]  # the left half of both images
    out = rpn_targets(anchors, boxes, classes, crowd, num_samples=600, seed=0)
    plain = rpn_targets(anchors, boxes, classes, num_samples=600, seed=0)
    labels, plain_labels = out["labels"].numpy(), plain["labels"].numpy()
    inside = _coverage(anchors, crowd[0, 0]) >= 0.5
    assert inside.sum() > 20
    # 600 slots for 300 anchors: everything is sampled except what is ignored.
    np.testing.assert_array_equal(labels[:, ~inside], plain_labels[:, ~inside])
    np.testing.assert_array_equal(labels[:, inside & (plain_labels[0] == 1)][0], 1.0)  # objects stay positive
    assert np.all(labels[:, inside & (plain_labels[0] != 1)] == -1.0)


def _coverage(boxes, region):
    ih = np.clip(np.minimum(boxes[:, 2], region[2]) - np.maximum(boxes[:, 0], region[0]), 0, None)
    iw = np.clip(np.minimum(boxes[:, 3], region[3]) - np.maximum(boxes[:, 1], region[1]), 0, None)
    return ih * iw / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def test_box_head_targets_equal_torchvision_select_training_samples():
    rng = np.random.default_rng(8)
    boxes, classes = _scene(rng)
    proposals = np.stack([_anchors(rng, 200), _anchors(rng, 200)])
    proposals[:, :30] = boxes[0, rng.integers(0, 3, 30)] + rng.normal(0, 2.5, (30, 4)).astype(np.float32)
    proposals[:, 180:] = 0.0  # padding rows
    out = {k: v.numpy() for k, v in box_head_targets(proposals, boxes, classes, num_samples=48,
                                                      positive_fraction=0.25, seed=9).items()}
    heads = RoIHeads(None, None, None, fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=48,
                     positive_fraction=0.25, bbox_reg_weights=None, score_thresh=0.05, nms_thresh=0.5,
                     detections_per_img=100)
    # Our candidate k (proposals, then the ground-truth slots) -> torchvision's (valid proposals, then valid gt).
    tv_index, tv_labels_seen = [], []
    for b in range(2):
        gt_rows = np.flatnonzero(classes[b] > 0)
        index = np.full(180 + 20 + 4, -1)
        index[:180] = np.arange(180)
        index[200 + gt_rows] = 180 + np.arange(len(gt_rows))
        tv_index.append(index)
    # The sampled RoIs as torchvision candidate indices (found by their boxes).
    sampled_tv = [tv_index[b][_our_candidates(out, proposals, boxes, b)] for b in range(2)]

    def sampler(labels):
        pos, neg = [], []
        for b, lab in enumerate(labels):
            chosen = sampled_tv[b][out["valid"][b]]
            positive = out["class_ids"][b][out["valid"][b]] > 0
            p, n = torch.zeros_like(lab, dtype=torch.uint8), torch.zeros_like(lab, dtype=torch.uint8)
            p[chosen[positive]], n[chosen[~positive]] = 1, 1
            tv_labels_seen.append(lab.numpy())
            pos.append(p)
            neg.append(n)
        return pos, neg

    heads.fg_bg_sampler = sampler
    targets = [{"boxes": _torch_boxes(boxes[b][classes[b] > 0]),
                "labels": torch.from_numpy(classes[b][classes[b] > 0]).long()} for b in range(2)]
    rois, matched, labels, deltas = heads.select_training_samples(
        [_torch_boxes(proposals[b][:180]) for b in range(2)], targets)
    for b in range(2):
        tv_labels = tv_labels_seen[b]
        valid = out["valid"][b]
        num_pos = min((tv_labels > 0).sum(), 12)
        assert (out["class_ids"][b][valid] > 0).sum() == num_pos
        assert valid.sum() == num_pos + min((tv_labels == 0).sum(), 48 - num_pos)
        order = np.argsort(sampled_tv[b][valid])  # torchvision lists the sampled in candidate order
        np.testing.assert_array_equal(out["class_ids"][b][valid][order], labels[b].numpy())
        np.testing.assert_allclose(out["rois"][b][valid][order], rois[b].numpy()[:, XY], rtol=1e-6)
        positive = labels[b].numpy() > 0
        # torchvision also encodes background RoIs (towards ground truth 0; its loss never reads them): ours are 0.
        np.testing.assert_allclose(out["deltas"][b][valid][order][positive], deltas[b].numpy()[positive][:, XY],
                                   rtol=1e-4, atol=1e-4)
        assert not out["deltas"][b][valid][order][~positive].any()
        gt_rows = np.flatnonzero(classes[b] > 0)
        np.testing.assert_array_equal(out["gt_index"][b][valid][order][positive],
                                      gt_rows[matched[b].numpy()[positive]])
        assert not out["rois"][b][~valid].any() and not out["class_ids"][b][~valid].any()
    # Image 1 has no objects: background only.
    assert out["valid"][1].all() and not out["class_ids"][1].any() and not out["deltas"][1].any()


def _our_candidates(out, proposals, boxes, b):
    """Which of our candidates (proposals then ground truth) each sampled RoI is, found by its box."""
    candidates = np.concatenate([proposals[b], boxes[b]])
    rows = []
    for s in range(len(out["rois"][b])):
        if not out["valid"][b][s]:
            rows.append(0)
            continue
        same = np.flatnonzero((candidates == out["rois"][b][s]).all(axis=1))
        rows.append(same[0])
    return np.array(rows)


def test_box_head_skips_crowds_and_padding():
    rng = np.random.default_rng(10)
    boxes, classes = _scene(rng)
    proposals = np.stack([_anchors(rng, 100)] * 2)
    proposals[:, 80:] = 0.0
    crowd = np.zeros((2, 3, 4), np.float32)
    crowd[:, 1] = [0, 48, 64, 96]  # the right half
    out = box_head_targets(proposals, boxes, classes, crowd, num_samples=300, seed=0)
    rois, valid, class_ids = out["rois"].numpy(), out["valid"].numpy(), out["class_ids"].numpy()
    for b in range(2):
        background = rois[b][valid[b] & (class_ids[b] == 0)]
        assert len(background) and np.all(_coverage(background, crowd[b, 1]) < 0.5)
        assert np.all((rois[b][valid[b], 2] > rois[b][valid[b], 0]))  # no padding proposal sampled
        assert not np.any(np.all(rois[b][valid[b]] == crowd[b, 1], axis=1))  # crowd boxes are no candidates
    # Image 0's three ground-truth boxes are candidates themselves: each is sampled as its own positive.
    for row in range(3):
        assert np.any(np.all(rois[0] == boxes[0, row], axis=1) & (class_ids[0] == classes[0, row]))


def test_targets_compile_under_xla():
    rng = np.random.default_rng(11)
    boxes, classes = _scene(rng)
    anchors, proposals = _anchors(rng, 300), np.stack([_anchors(rng, 50)] * 2)
    seed = keras.random.SeedGenerator(0)

    @tf.function(jit_compile=True)
    def step(boxes, classes, proposals):
        return (rpn_targets(anchors, boxes, classes, boxes, num_samples=32, seed=seed),
                box_head_targets(proposals, boxes, classes, boxes, num_samples=16, seed=seed))

    rpn, heads = step(boxes, classes, proposals)
    again, _ = step(boxes, classes, proposals)
    assert (rpn["labels"].numpy() >= 0).sum() == 64 and heads["rois"].shape == (2, 16, 4)
    assert not np.array_equal(rpn["labels"], again["labels"])

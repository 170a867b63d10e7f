"""detector_losses: every loss of a training step from raw outputs and a data.coco-shaped batch.

References: torchvision's RegionProposalNetwork.compute_loss and fastrcnn_loss
given the same sampled sets (the RPN's reproduced with a generator of the same
seed), torch's binary_cross_entropy_with_logits for the mask loss; an image
batch without objects; gradients through padding.
"""
import keras
import numpy as np
import tensorflow as tf
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork

from models.mask_rcnn.losses import detector_losses
from models.mask_rcnn.targets import box_head_targets, mask_targets, positive_rois, rpn_targets

XY = [1, 0, 3, 2]
K, S, MASK = 3, 32, 14


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def _batch(with_objects=True):
    rng = np.random.default_rng(0)
    boxes = np.zeros((2, 5, 4), np.float32)
    class_ids = np.zeros((2, 5), np.int32)
    if with_objects:
        boxes[0, :2] = [[4, 4, 30, 28], [20, 30, 60, 62]]
        boxes[1, :1] = [[10, 10, 50, 40]]
        class_ids[0, :2], class_ids[1, :1] = [2, 3], [1]
    masks = (rng.random((2, 5, 16, 16)) > 0.4).astype(np.uint8) * 255
    crowd = np.zeros((2, 5, 4), np.float32)
    crowd[1, 0] = [40, 40, 64, 64]
    return {"boxes": boxes, "class_ids": class_ids, "masks": masks, "crowd_boxes": crowd,
            "image_size": np.array([[64, 64], [64, 64]], np.int32)}


def _anchors():
    sizes = np.array([8.0, 16.0, 32.0])
    centres = np.arange(4.0, 64.0, 8.0)
    cy, cx, size = np.meshgrid(centres, centres, sizes, indexing="ij")
    cy, cx, size = cy.ravel(), cx.ravel(), size.ravel()
    return np.stack([cy - size / 2, cx - size / 2, cy + size / 2, cx + size / 2], 1).astype(np.float32)


def _outputs(anchors, rng):
    a = len(anchors)
    return {"anchors": anchors,
            "rpn_logits": tf.constant(rng.normal(0, 2, (2, a)), tf.float32),
            "rpn_deltas": tf.constant(rng.normal(0, 0.2, (2, a, 4)), tf.float32),
            "class_logits": tf.constant(rng.normal(0, 1, (2, S, K + 1)), tf.float32),
            "box_deltas": tf.constant(rng.normal(0, 0.5, (2, S, K + 1, 4)), tf.float32),
            # One mask per sampled slot: _on_positives keeps the positives' rows, the training step's mask_logits.
            "slot_mask_logits": tf.constant(rng.normal(0, 2, (2, S, MASK, MASK, K + 1)), tf.float32)}


def _on_positives(outputs, sampled):
    """detector_losses' outputs: mask_logits [N, m, m, K + 1] the rows of slot_mask_logits at positive_rois."""
    positives = positive_rois(sampled)
    index = tf.stack([positives["image_index"], positives["slot"]], axis=-1)
    return {**{k: v for k, v in outputs.items() if k != "slot_mask_logits"},
            "mask_logits": tf.gather_nd(outputs["slot_mask_logits"], index)}


def _proposals(batch, rng):
    jittered = batch["boxes"][:, :2] + rng.normal(0, 3, (2, 2, 4)).astype(np.float32)
    random = rng.uniform(0, 40, (2, 20, 2)).astype(np.float32)
    random = np.concatenate([random, random + rng.uniform(4, 24, (2, 20, 2)).astype(np.float32)], axis=2)
    return np.concatenate([jittered, random, np.zeros((2, 4, 4), np.float32)], axis=1)  # with padding rows


def test_detector_losses_equal_torchvision_losses():
    rng = np.random.default_rng(1)
    batch, anchors = _batch(), _anchors()
    outputs = _outputs(anchors, rng)
    sampled = box_head_targets(_proposals(batch, rng), batch["boxes"], batch["class_ids"], batch["crowd_boxes"],
                               num_samples=S, positive_fraction=0.25, seed=keras.random.SeedGenerator(2))
    parts = {k: v.numpy() for k, v in detector_losses(_on_positives(outputs, sampled), batch, sampled,
                                                      seed=keras.random.SeedGenerator(3)).items()}
    # The same RPN draw: a generator with the same seed.
    rpn = rpn_targets(anchors, batch["boxes"], batch["class_ids"], batch["crowd_boxes"],
                      seed=keras.random.SeedGenerator(3))
    labels, deltas = rpn["labels"].numpy(), rpn["deltas"].numpy()
    torch_rpn = RegionProposalNetwork(None, None, 0.7, 0.3, 256, 0.5, {"training": 1}, {"training": 1}, 0.7)
    torch_rpn.fg_bg_sampler = lambda per_image: ([(lab == 1).to(torch.uint8) for lab in per_image],
                                                 [(lab == 0).to(torch.uint8) for lab in per_image])
    objectness, rpn_box = torch_rpn.compute_loss(
        _t(outputs["rpn_logits"].numpy().reshape(-1, 1)), _t(outputs["rpn_deltas"].numpy()[..., XY].reshape(-1, 4)),
        [_t(lab) for lab in labels], [_t(d[:, XY]) for d in deltas])
    assert (labels == 1).sum() > 0
    np.testing.assert_allclose(parts["rpn_objectness"], objectness.item(), rtol=1e-5)
    np.testing.assert_allclose(parts["rpn_box"], rpn_box.item(), rtol=1e-5)

    valid, class_ids = sampled["valid"].numpy(), sampled["class_ids"].numpy()
    box_class, box_regression = fastrcnn_loss(
        _t(outputs["class_logits"].numpy()[valid]),
        _t(outputs["box_deltas"].numpy()[valid][..., XY].reshape(-1, 4 * (K + 1))),
        [_t(class_ids[valid].astype(np.int64))], [_t(sampled["deltas"].numpy()[valid][:, XY])])
    np.testing.assert_allclose(parts["box_class"], box_class.item(), rtol=1e-5)
    np.testing.assert_allclose(parts["box_regression"], box_regression.item(), rtol=1e-5)

    # Mask: the positive slots, their class's channel, BCE from logits over all their pixels.
    positive = class_ids > 0
    assert positive.sum() > 0
    targets = mask_targets(batch["masks"], batch["boxes"], sampled["rois"], sampled["gt_index"], MASK).numpy()
    picked = np.take_along_axis(outputs["slot_mask_logits"].numpy(), class_ids[..., None, None, None], axis=-1)[..., 0]
    expected_mask = F.binary_cross_entropy_with_logits(_t(picked[positive]), _t(targets[positive]))
    np.testing.assert_allclose(parts["mask"], expected_mask.item(), rtol=1e-5)
    names = ("rpn_objectness", "rpn_box", "box_class", "box_regression", "mask")
    np.testing.assert_allclose(parts["loss"], sum(parts[n] for n in names), rtol=1e-6)


def test_images_without_objects_give_finite_losses_and_zero_box_and_mask_losses():
    rng = np.random.default_rng(4)
    batch, anchors = _batch(with_objects=False), _anchors()
    outputs = _outputs(anchors, rng)
    sampled = box_head_targets(_proposals(batch, rng), batch["boxes"], batch["class_ids"], batch["crowd_boxes"],
                               num_samples=S, seed=0)
    assert not sampled["class_ids"].numpy().any()
    variables = {k: tf.Variable(v) for k, v in outputs.items() if k != "anchors"}
    with tf.GradientTape() as tape:
        parts = detector_losses(_on_positives(dict(variables, anchors=anchors), sampled), batch, sampled,
                                seed=keras.random.SeedGenerator(0))
    for name in ("rpn_box", "box_regression", "mask"):
        assert parts[name].numpy() == 0.0
    assert parts["rpn_objectness"].numpy() > 0 and parts["box_class"].numpy() > 0
    gradients = tape.gradient(parts["loss"], variables)
    assert all(np.isfinite(g.numpy()).all() for g in gradients.values() if g is not None)
    assert np.abs(gradients["rpn_logits"].numpy()).sum() > 0


def test_gradients_through_padding_are_finite():
    rng = np.random.default_rng(5)
    batch, anchors = _batch(), _anchors()
    outputs = _outputs(anchors, rng)
    sampled = box_head_targets(_proposals(batch, rng), batch["boxes"], batch["class_ids"], num_samples=S, seed=1)
    variables = {k: tf.Variable(v) for k, v in outputs.items() if k != "anchors"}
    with tf.GradientTape() as tape:
        parts = detector_losses(_on_positives(dict(variables, anchors=anchors), sampled), batch, sampled,
                                seed=keras.random.SeedGenerator(1))
    gradients = tape.gradient(parts["loss"], variables)
    for name, gradient in gradients.items():
        assert np.isfinite(gradient.numpy()).all() and np.abs(gradient.numpy()).sum() > 0, name


def test_two_replicas_sum_to_the_one_device_losses(two_replica_strategy):
    # Replica 0 holds the images with objects, replica 1 two without: different counts in every loss. The RPN
    # samples every anchor (1000 slots for 192 anchors), so both runs sample the same sets.
    rng = np.random.default_rng(6)
    full, empty, anchors = _batch(), _batch(with_objects=False), _anchors()
    batch = {k: np.concatenate([full[k], empty[k]]) for k in full}
    outputs = {k: np.concatenate([v.numpy(), v.numpy()[::-1] * 0.5]) for k, v in _outputs(anchors, rng).items()
               if k != "anchors"}
    proposals = np.concatenate([_proposals(full, rng), _proposals(empty, rng)])
    sampled = {k: v.numpy() for k, v in box_head_targets(proposals, batch["boxes"], batch["class_ids"],
                                                          batch["crowd_boxes"], num_samples=S, seed=0).items()}
    single = detector_losses(_on_positives(dict(outputs, anchors=anchors), sampled), batch, sampled,
                             seed=keras.random.SeedGenerator(0), rpn_num_samples=1000)

    def halves(context):
        part = slice(2 * context.replica_id_in_sync_group, 2 * context.replica_id_in_sync_group + 2)
        return tuple({k: tf.constant(v[part]) for k, v in d.items()} for d in (outputs, batch, sampled))

    strategy = two_replica_strategy
    with strategy.scope():
        seed = keras.random.SeedGenerator(0)
    per_replica = strategy.run(
        lambda o, b, s: detector_losses(_on_positives(dict(o, anchors=anchors), s), b, s, seed=seed,
                                        rpn_num_samples=1000),
        args=strategy.experimental_distribute_values_from_function(halves))
    for name, value in single.items():
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica[name], axis=None)
        np.testing.assert_allclose(total.numpy(), value.numpy(), rtol=1e-5, err_msg=name)

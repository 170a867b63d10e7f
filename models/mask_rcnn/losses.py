"""Every loss of the detector's training step, from its raw training-mode outputs and a data.coco batch.

A training step, as torchvision's MaskRCNN.forward in training mode:

    seed = keras.random.SeedGenerator(seed)                      # once, owned by the trainer
    # forward, part 1: backbone + FPN -> RPN logits/deltas over all anchors -> proposals (no gradient)
    sampled = box_head_targets(proposals, batch["boxes"], batch["class_ids"], batch["crowd_boxes"], seed=seed)
    positives = positive_rois(sampled)                          # the batch's positive RoIs, one flat list
    # forward, part 2: box head on sampled["rois"], mask head on positives["rois"]
    parts = detector_losses(outputs, batch, sampled, seed=seed, positives=positives)  # parts["loss"]: to minimise

Each loss is this replica's share of its global mean (losses.distribute):
summed over the replicas it is the mean over the whole global batch, so a
tf.distribute train step minimises parts["loss"] as it is (and multiplies by
num_replicas_in_sync only for logging).
"""
import losses
from losses.distribute import replica_share_of_mean
from models.mask_rcnn.targets import mask_targets, positive_rois, rpn_targets

LOSS_NAMES = ("rpn_objectness", "rpn_box", "box_class", "box_regression", "mask")


def detector_losses(outputs, batch, sampled, *, seed, positives=None, rpn_num_samples=256, rpn_positive_fraction=0.5,
                    rpn_high_threshold=0.7, rpn_low_threshold=0.3):
    """The five Mask R-CNN losses and their sum, torchvision's (all weights 1).

    outputs: the detector's training-mode outputs, a dict:
      anchors [A, 4] float: every level's anchors concatenated, (y1, x1, y2, x2)
        in the batch's (resized, padded) image pixels, in the order of
      rpn_logits [B, A] float (objectness logits) and rpn_deltas [B, A, 4]
        float (dy, dx, dh, dw; weights (1, 1, 1, 1));
      class_logits [B, S, K + 1] float and box_deltas [B, S, K + 1, 4] (or
        [B, S, 4 * (K + 1)]) float (weights (10, 10, 5, 5)), on sampled["rois"];
      mask_logits [N, m, m, K + 1] float, on positives["rois"] (the batch's
        positive RoIs only, as torchvision's maskrcnn_loss).
    batch: a data.coco.make_dataset element; reads boxes [B, M, 4] float32
      (resized-image pixels), class_ids [B, M] int32 (0 = padding),
      masks [B, M, s, s] uint8 (each instance's mask inside its box) and
      crowd_boxes [B, Mc, 4] float32 (zeros = padding).
    sampled: models.mask_rcnn.targets.box_head_targets of this batch (rois,
      class_ids, deltas, gt_index, valid [B, S]).
    seed: a keras.random.SeedGenerator for the RPN's anchor sampling.
    positives: targets.positive_rois(sampled), if the caller has it already.
    rpn_*: rpn_targets' sampling and thresholds.
    Returns {"rpn_objectness", "rpn_box", "box_class", "box_regression",
    "mask", "loss"}: scalars float32, each this replica's share of its global
    mean; "loss" is their sum.
    """
    rpn = rpn_targets(outputs["anchors"], batch["boxes"], batch["class_ids"], batch.get("crowd_boxes"),
                      num_samples=rpn_num_samples, positive_fraction=rpn_positive_fraction,
                      high_threshold=rpn_high_threshold, low_threshold=rpn_low_threshold, seed=seed)
    positives = positive_rois(sampled) if positives is None else positives
    mask_logits = outputs["mask_logits"]
    masks = mask_targets(batch["masks"], batch["boxes"], positives["rois"], positives["gt_index"],
                         mask_logits.shape[1], image_index=positives["image_index"])
    shares = [
        losses.rpn_objectness_sum_and_count(rpn["labels"], outputs["rpn_logits"]),
        losses.rpn_box_sum_and_count(rpn["labels"], rpn["deltas"], outputs["rpn_deltas"]),
        losses.box_class_sum_and_count(sampled["class_ids"], outputs["class_logits"], sampled["valid"]),
        losses.box_regression_sum_and_count(sampled["class_ids"], sampled["deltas"], outputs["box_deltas"],
                                            sampled["valid"]),
        # One "image" of N RoIs for the shared loss (its stand-in row, if any, has class 0: no weight).
        losses.mask_rcnn_mask_sum_and_count(masks[None], positives["class_ids"][None], mask_logits[None],
                                            from_logits=True),
    ]
    parts = {name: replica_share_of_mean(total, count) for name, (total, count) in zip(LOSS_NAMES, shares)}
    parts["loss"] = sum(parts[name] for name in LOSS_NAMES)
    return parts

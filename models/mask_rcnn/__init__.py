"""Mask R-CNN: RoI heads (class and mask branches), their targets, training and inference.

The RPN and box branch come in a later issue; until then the heads train on
RoIs derived from the ground truth and are evaluated with oracle boxes.
"""
from models.mask_rcnn.heads import ClassHead, MaskHead
from models.mask_rcnn.inference import (
    PastedMasks,
    PickMaskChannel,
    PredictClass,
    paste_masks,
    pick_mask_channel,
    predict_oracle_masks,
)
from models.mask_rcnn.model import build_mask_head_model
from models.mask_rcnn.detector_losses import detector_losses
from models.mask_rcnn.matching import box_iou, match_boxes, sample_balanced
from models.mask_rcnn.targets import box_head_targets, mask_targets, rpn_targets, sample_rois
from models.mask_rcnn.trainer import MaskHeadTrainer, head_losses

__all__ = [
    "ClassHead", "MaskHead", "MaskHeadTrainer", "PastedMasks", "PickMaskChannel", "PredictClass",
    "box_head_targets", "box_iou", "build_mask_head_model", "detector_losses", "head_losses", "mask_targets",
    "match_boxes", "paste_masks", "pick_mask_channel", "predict_oracle_masks", "rpn_targets", "sample_balanced",
    "sample_rois",
]

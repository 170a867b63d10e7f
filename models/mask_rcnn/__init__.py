"""Mask R-CNN: the whole detector (torchvision's architecture), its stages, targets, training and inference.

build_mask_rcnn (detector.py) wires the stages: anchors, rpn, roi_heads,
detections, heads (mask branch), inference (class-picked masks, pasting);
transform.py takes photos in and returns detections in their pixels;
convert_torchvision.py reads torchvision's weights. build_mask_head_model is
the older RoI-heads-only model (oracle boxes). DetectorTrainer (detector_trainer.py)
trains the detector in stages; recipe.py is its run. evaluation.py scores a
checkpoint on COCO (evaluate.py); run_detector.py runs a detector over a dataset
or over photos (predict.py).
"""
from models.mask_rcnn.detector import build_mask_rcnn, detector_layers, roi_heads_model, rpn_model
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
from models.mask_rcnn.detector_trainer import DetectorTrainer, set_stage
from models.mask_rcnn.matching import box_iou, match_boxes, sample_balanced
from models.mask_rcnn.targets import box_head_targets, mask_targets, rpn_targets, sample_rois
from models.mask_rcnn.trainer import MaskHeadTrainer, head_losses
from models.mask_rcnn.transform import detect, preprocess

__all__ = [
    "ClassHead", "DetectorTrainer", "MaskHead", "MaskHeadTrainer", "PastedMasks", "PickMaskChannel", "PredictClass",
    "box_head_targets", "box_iou", "build_mask_head_model", "build_mask_rcnn", "detect", "detector_layers",
    "detector_losses", "head_losses", "mask_targets", "match_boxes", "paste_masks", "pick_mask_channel",
    "predict_oracle_masks", "preprocess", "roi_heads_model", "rpn_model", "rpn_targets", "sample_balanced",
    "sample_rois", "set_stage",
]

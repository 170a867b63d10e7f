"""Mask R-CNN: the whole detector, layer for layer torchvision's maskrcnn_resnet50_fpn (v1) and _v2.

Modules, one stage a file as torchvision's detection package, then training, then use:
    transform    photos -> the detector's inputs (resize, normalise, pad) and detections back to the photo's pixels
    anchors      one anchor size per FPN level, every aspect ratio, on every feature-map pixel
    box_coder    boxes <-> regression deltas (the RPN's and the box head's weights)
    matching     candidates matched to ground truth, balanced sampling (shared by the RPN and the RoI heads)
    nms          batched, grouped non-maximum suppression in one op
    rpn          the RPN head and its proposals
    roi_heads    box head, mask head, the class-picked mask channel
    detections   the box branch's outputs -> per-class NMS -> detections (and the dataset's category ids)
    paste        28x28 masks pasted into the image (torchvision's paste_masks_in_image)
    detector     build_mask_rcnn: the stages wired into one Keras model; views of its stages
    targets      RPN and RoI-head training targets from ground truth
    losses       the five losses of a training step, exact global means under tf.distribute
    trainer      DetectorTrainer: the staged training step (heads, mask_head, all)
    loading      a detector back from any .keras the project writes; fine-tuning initialisation
    oracle       the class and mask branches on given boxes (evaluate.py --boxes gt)
    evaluation   COCO bbox / segm AP of a checkpoint (evaluate.py)
    prediction   detections over a dataset or over photos (predict.py)
    recipe       the training run's configuration, presets and run function (train.py --model mask_rcnn)
Converting torchvision's weights: models.convert.torchvision.
"""
from models.mask_rcnn.detector import build_mask_rcnn, detector_layers, roi_heads_model, rpn_model
from models.mask_rcnn.losses import detector_losses
from models.mask_rcnn.matching import box_iou, match_boxes, sample_balanced
from models.mask_rcnn.oracle import oracle_heads_model, predict_oracle_masks
from models.mask_rcnn.paste import PastedMasks, paste_masks
from models.mask_rcnn.roi_heads import BoxHead, MaskHead, PickMaskChannel, PredictClass, pick_mask_channel
from models.mask_rcnn.targets import box_head_targets, mask_targets, rpn_targets, sample_rois
from models.mask_rcnn.trainer import DetectorTrainer, set_stage
from models.mask_rcnn.transform import detect, preprocess

__all__ = [
    "BoxHead", "DetectorTrainer", "MaskHead", "PastedMasks", "PickMaskChannel", "PredictClass", "box_head_targets",
    "box_iou", "build_mask_rcnn", "detect", "detector_layers", "detector_losses", "mask_targets", "match_boxes",
    "oracle_heads_model", "paste_masks", "pick_mask_channel", "predict_oracle_masks", "preprocess",
    "roi_heads_model", "rpn_model", "rpn_targets", "sample_balanced", "sample_rois", "set_stage",
]

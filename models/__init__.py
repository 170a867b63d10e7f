"""Keras 3 models: ResNet backbones, PSPNet, segmentation inference."""
from models.pspnet import build_pspnet, inference_model
from models.resnet import build_resnet
from models.fpn import build_resnet_fpn
from models.mask_rcnn import MaskHeadTrainer, build_mask_head_model, build_mask_rcnn, predict_oracle_masks

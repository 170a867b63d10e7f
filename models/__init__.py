"""Keras 3 models: ResNet backbones, PSPNet, segmentation inference."""
from models.pspnet import build_pspnet, inference_model
from models.resnet import build_resnet

"""Keras 3 architectures: ResNet backbones, the FPN, shared layers, RoIAlign, PSPNet and Mask R-CNN.

    models.build_pspnet(num_classes, backbone="resnet101", aux=True)   -> keras.Model (models/pspnet/)
    models.build_mask_rcnn(num_classes, backbone="resnet50")             -> keras.Model (models/mask_rcnn/)
Beside the architectures: models.training (the engine every recipe shares), models.convert (published
PyTorch checkpoints -> .keras), models.checkpoints (safe .keras loading). Importing this package
registers every layer a .keras file of the project names.
"""
from models.fpn import build_resnet_fpn
from models.mask_rcnn.detector import build_mask_rcnn
from models.pspnet.model import build_pspnet, inference_model
from models.resnet import build_resnet

__all__ = ["build_mask_rcnn", "build_pspnet", "build_resnet", "build_resnet_fpn", "inference_model"]

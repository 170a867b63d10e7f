"""Loss functions shared by PSPNet and Mask R-CNN.

Each loss is a pure function on tensors (mirroring the reference TF code, step
by step) plus, where it is used in `compile`, a thin serializable Keras `Loss`
that is exact under tf.distribute.
"""
from losses.basic import (
    binary_cross_entropy,
    categorical_cross_entropy,
    l2_loss,
    sigmoid,
    softmax,
)
from losses.mask_rcnn import MaskRCNNMaskLoss, mask_rcnn_mask_loss, mask_rcnn_mask_sum_and_count
from losses.pspnet import (
    AUX_WEIGHT,
    PixelwiseSoftmaxCrossEntropy,
    pixelwise_softmax_loss,
    pixelwise_softmax_sum_and_count,
    pspnet_loss,
)

__all__ = [
    "AUX_WEIGHT",
    "MaskRCNNMaskLoss",
    "PixelwiseSoftmaxCrossEntropy",
    "binary_cross_entropy",
    "categorical_cross_entropy",
    "l2_loss",
    "mask_rcnn_mask_loss",
    "mask_rcnn_mask_sum_and_count",
    "pixelwise_softmax_loss",
    "pixelwise_softmax_sum_and_count",
    "pspnet_loss",
    "sigmoid",
    "softmax",
]

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
    smooth_l1,
    softmax,
)
from losses.detection import (
    BOX_LOSS_BETA,
    BoxClassLoss,
    BoxRegressionLoss,
    RPNBoxLoss,
    RPNObjectnessLoss,
    box_class_loss,
    box_class_sum_and_count,
    box_regression_loss,
    box_regression_sum_and_count,
    rpn_box_loss,
    rpn_box_sum_and_count,
    rpn_objectness_loss,
    rpn_objectness_sum_and_count,
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
    "BOX_LOSS_BETA",
    "BoxClassLoss",
    "BoxRegressionLoss",
    "RPNBoxLoss",
    "RPNObjectnessLoss",
    "box_class_loss",
    "box_class_sum_and_count",
    "box_regression_loss",
    "box_regression_sum_and_count",
    "rpn_box_loss",
    "rpn_box_sum_and_count",
    "rpn_objectness_loss",
    "rpn_objectness_sum_and_count",
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
    "smooth_l1",
    "softmax",
]

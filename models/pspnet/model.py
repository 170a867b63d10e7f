"""PSPNet (Zhao et al., CVPR 2017): dilated ResNet + pyramid pooling module.

Graph (channel counts for base_width=64 and a bottleneck backbone; every
channel count scales with base_width / 64):

  images [B, H, W, 3] -> backbone (nested keras.Model named "backbone")
  C5 [B, h, w, 2048] -> for each bin b: adaptive average pool to b x b,
      1x1 conv 512 + BN + ReLU  ("ppm{b}_*")
  3x3 conv 512 of concat [C5, the 4 branches resized bilinearly to h x w]
      (4096 channels; "head_conv", a PyramidConv2D that computes exactly
      that without building the concat) + BN + ReLU + dropout
      + 1x1 classifier  ("head_*") -> bilinear resize to H x W  ("logits")
  C4 [B, h, w, 1024] (last block of stage 4, res4b22 in ResNet-101)
      -> 3x3 conv 256 + BN + ReLU + dropout + 1x1 classifier ("aux_*")
      -> bilinear resize to H x W ("aux_logits")

Layouts: the published implementations share these weight shapes (and so this
graph and its layer names) but compute differently; `layout` picks one, so
converted weights compute what they computed in their source (LAYOUTS below):
- "caffe": the original Caffe PSPNet: stride on the bottleneck's first 1x1,
  every 3x3 of a dilated stage dilated, half-pixel resizes (align_corners=False).
- "semseg": hszhao/semseg (PyTorch): stride on the 3x3, deep stem 64/64/128,
  every 3x3 of a dilated stage dilated (first block too), align_corners=True
  resizes in the pyramid and for the output, channel dropout (Dropout2d).
- "mmseg": mmsegmentation's PSPNet on ResNetV1c "-D8": stride on the 3x3, deep
  stem 32/32/64, contracted dilation (the first block of a dilated stage uses
  half the dilation), align_corners=False, Dropout2d.
- "mmseg_769x769": the same with align_corners=True, as mmsegmentation's
  Cityscapes 769x769 configs set it in both heads (and so for the output).
The PyTorch layouts use PyTorch's BatchNorm epsilon, 1e-5.

The classifiers and resizes run in float32, so logits are float32 under any
mixed-precision policy. Images come normalised by the data pipeline as
(RGB - data.normalization.INPUT_MEAN) / INPUT_STD (semseg and mmsegmentation
normalise the same way); ImageNet backbone weights are converted to that
convention when loaded (models.resnet.load_imagenet_weights).

The model is a `PSPNet` (a keras.Model that builds this functional graph in
__init__), so a `.keras` file records the builder's arguments, layout
included (`model.get_config()`).
"""
import dataclasses

import keras

from models.layers import AdaptiveAveragePooling2D, PyramidConv2D, ResizeLike
from models.resnet import BN_EPSILON, batch_norm, build_resnet, conv_bn, load_imagenet_weights

BACKBONES = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}


@dataclasses.dataclass(frozen=True)
class Layout:
    """What an implementation computes that its weights do not show (see the module docstring)."""

    stride_on: str  # which bottleneck conv strides: "1x1" or "3x3"
    bn_epsilon: float
    half_width_stem: bool  # deep stem 32/32/64 instead of 64/64/128 (at base_width 64)
    contract_dilation: bool  # first block of a dilated stage at half the dilation
    align_corners: bool  # bilinear resizes of the pyramid and the logits
    channel_dropout: bool  # Dropout2d (whole channels) rather than element-wise dropout


LAYOUTS = {
    "caffe": Layout("1x1", BN_EPSILON, False, False, False, False),
    "semseg": Layout("3x3", 1e-5, False, False, True, True),
    "mmseg": Layout("3x3", 1e-5, True, True, False, True),
    "mmseg_769x769": Layout("3x3", 1e-5, True, True, True, True),
}


def _classifier(x, num_classes, dropout, name, channel_dropout):
    if channel_dropout:
        x = keras.layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(x)
    else:
        x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return keras.layers.Conv2D(num_classes, 1, dtype="float32", name=f"{name}_classifier")(x)


def build_pspnet(num_classes, backbone="resnet101", aux=True, **options):
    """Builds PSPNet: `PSPNet(num_classes, backbone, aux, **options)`; see PSPNet for the arguments."""
    return PSPNet(num_classes, backbone, aux, **options)


@keras.saving.register_keras_serializable(package="models")
class PSPNet(keras.Model):
    """PSPNet as a functional graph; get_config() holds the arguments below (not backbone_weights).

    Args:
      num_classes: number of output classes C.
      backbone: one of BACKBONES ("resnet18" ... "resnet152").
      aux: add the auxiliary head on C4 (training); see inference_model().
      layout: "caffe" (default), "semseg", "mmseg" or "mmseg_769x769": which
        implementation's computation to reproduce (module docstring); all but
        "caffe" need a bottleneck backbone (resnet50/101/152) and the deep stem.
      stem: "deep" (the paper's) or "standard" (needed for backbone_weights).
      output_stride: 8 (the paper's), 16 or 32.
      base_width: 64 in the paper; smaller values shrink every channel count.
      bins: pyramid pooling grid sizes.
      dropout: dropout rate before both classifiers.
      sync_bn: synchronized BatchNormalization (multi-replica training).
      backbone_weights: None, "imagenet" or a Keras Applications ResNet weights
        path; requires stem="standard", base_width=64, depth 50/101/152 and
        the "caffe" layout. Used when building, not recorded in the config.
      input_shape: (H, W, 3); None for any size.

    Call: images [B, H, W, 3] float32. aux=True: {"main": [B, H, W, C] float32,
    "aux": [B, H, W, C] float32} logits; aux=False: the main logits [B, H, W, C] float32.
    """

    def __init__(self, num_classes, backbone="resnet101", aux=True, *, layout="caffe", stem="deep", output_stride=8,
                 base_width=64, bins=(1, 2, 3, 6), dropout=0.1, sync_bn=False, backbone_weights=None,
                 input_shape=(None, None, 3), name=None, **kwargs):
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}.")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}.")
        if backbone_weights is not None and (stem != "standard" or layout != "caffe"):
            raise ValueError('backbone_weights need the standard stem (Keras Applications layout): pass stem="standard" '
                             '(and the default layout="caffe").')
        if layout != "caffe" and (stem != "deep" or BACKBONES[backbone] < 50):
            raise ValueError(f'layout="{layout}" needs stem="deep" and a bottleneck backbone (resnet50/101/152).')
        images, outputs = _graph(num_classes, BACKBONES[backbone], aux, LAYOUTS[layout], stem=stem,
                                 output_stride=output_stride, base_width=base_width, bins=tuple(bins), dropout=dropout,
                                 sync_bn=sync_bn, backbone_weights=backbone_weights, input_shape=tuple(input_shape))
        name = name or f"pspnet_{backbone}"
        super().__init__(images, outputs, name=name, **kwargs)
        self.build_arguments = dict(
            num_classes=num_classes, backbone=backbone, aux=aux, layout=layout, stem=stem,
            output_stride=output_stride, base_width=base_width, bins=list(bins), dropout=dropout, sync_bn=sync_bn,
            input_shape=list(input_shape), name=name)

    @property
    def layout(self):
        return self.build_arguments["layout"]

    def get_config(self):
        return dict(self.build_arguments)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


def _graph(num_classes, depth, aux, layout, *, stem, output_stride, base_width, bins, dropout, sync_bn,
           backbone_weights, input_shape):
    """(images, outputs) of the PSPNet graph described in the module docstring."""
    body = build_resnet(
        depth,
        stem=stem,
        output_stride=output_stride,
        base_width=base_width,
        stride_on=layout.stride_on,
        bn_epsilon=layout.bn_epsilon,
        stem_width=base_width // 2 if layout.half_width_stem else None,
        contract_dilation=layout.contract_dilation,
        sync_bn=sync_bn,
        input_shape=input_shape,
        name="backbone",
    )
    if backbone_weights is not None:
        load_imagenet_weights(body, depth, backbone_weights)

    norm = {"sync_bn": sync_bn, "bn_epsilon": layout.bn_epsilon}
    images = keras.Input(shape=input_shape, name="images")
    features = body(images)
    c5 = features["C5"]
    branch_channels = c5.shape[-1] // len(bins)
    pyramid = [c5]
    for b in bins:
        y = AdaptiveAveragePooling2D(b, name=f"ppm{b}_pool")(c5)
        pyramid.append(conv_bn(y, branch_channels, 1, f"ppm{b}", **norm))
    x = PyramidConv2D(8 * base_width, 3, align_corners=layout.align_corners, name="head_conv")(pyramid)
    x = batch_norm("head_bn", sync_bn, layout.bn_epsilon)(x)
    x = keras.layers.ReLU(name="head_relu")(x)
    logits = _classifier(x, num_classes, dropout, "head", layout.channel_dropout)
    main = ResizeLike(layout.align_corners, dtype="float32", name="logits")([logits, images])
    if not aux:
        return images, main

    aux_hidden = conv_bn(features["C4"], 4 * base_width, 3, "aux", **norm)
    aux_logits = _classifier(aux_hidden, num_classes, dropout, "aux", layout.channel_dropout)
    aux_out = ResizeLike(layout.align_corners, dtype="float32", name="aux_logits")([aux_logits, images])
    return images, {"main": main, "aux": aux_out}


def inference_model(model):
    """A model with only the main logits [B, H, W, C] float32, sharing `model`'s weights.

    Use it for evaluation and `export()`; works on models loaded from `.keras` too.
    """
    return keras.Model(model.inputs[0], model.get_layer("logits").output, name=f"{model.name}_inference")


def head_layer_names(model):
    """Names of the layers with weights that are not in the backbone (PPM, heads).

    These are the newly initialised layers that the PSPNet recipe trains with a
    10x learning rate; the backbone is `model.get_layer("backbone")`.
    """
    return [layer.name for layer in model.layers if layer.name != "backbone" and layer.weights]

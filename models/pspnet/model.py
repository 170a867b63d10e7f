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

Every bilinear resize uses half-pixel centres (align_corners=False).
The classifiers and resizes run in float32, so logits are float32 under any
mixed-precision policy. Images come normalised by the data pipeline as
(RGB - models.resnet.INPUT_MEAN) / INPUT_STD; ImageNet backbone weights are
converted to that convention when loaded (models.resnet.load_imagenet_weights).
"""
import keras

from models.layers import AdaptiveAveragePooling2D, PyramidConv2D, ResizeLike
from models.resnet import batch_norm, build_resnet, conv_bn, load_imagenet_weights

BACKBONES = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}


def _classifier(x, num_classes, dropout, name):
    x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return keras.layers.Conv2D(num_classes, 1, dtype="float32", name=f"{name}_classifier")(x)


def build_pspnet(
    num_classes,
    backbone="resnet101",
    aux=True,
    *,
    stem="deep",
    output_stride=8,
    base_width=64,
    bins=(1, 2, 3, 6),
    dropout=0.1,
    sync_bn=False,
    backbone_weights=None,
    input_shape=(None, None, 3),
    name=None,
):
    """Builds PSPNet.

    Args:
      num_classes: number of output classes C.
      backbone: one of BACKBONES ("resnet18" ... "resnet152").
      aux: add the auxiliary head on C4 (training); see inference_model().
      stem: "deep" (the paper's) or "standard" (needed for backbone_weights).
      output_stride: 8 (the paper's), 16 or 32.
      base_width: 64 in the paper; smaller values shrink every channel count.
      bins: pyramid pooling grid sizes.
      dropout: dropout rate before both classifiers.
      sync_bn: synchronized BatchNormalization (multi-replica training).
      backbone_weights: None, "imagenet" or a Keras Applications ResNet weights
        path; requires stem="standard", base_width=64 and depth 50/101/152.
      input_shape: (H, W, 3); None for any size.

    Returns:
      keras.Model on images [B, H, W, 3] float32. aux=True: outputs
      {"main": [B, H, W, C] float32, "aux": [B, H, W, C] float32} logits;
      aux=False: the main logits [B, H, W, C] float32.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}.")
    if backbone_weights is not None and stem != "standard":
        raise ValueError('backbone_weights need the standard stem (Keras Applications layout): pass stem="standard".')
    depth = BACKBONES[backbone]
    body = build_resnet(
        depth,
        stem=stem,
        output_stride=output_stride,
        base_width=base_width,
        sync_bn=sync_bn,
        input_shape=input_shape,
        name="backbone",
    )
    if backbone_weights is not None:
        load_imagenet_weights(body, depth, backbone_weights)

    images = keras.Input(shape=input_shape, name="images")
    features = body(images)
    c5 = features["C5"]
    branch_channels = c5.shape[-1] // len(bins)
    pyramid = [c5]
    for b in bins:
        y = AdaptiveAveragePooling2D(b, name=f"ppm{b}_pool")(c5)
        pyramid.append(conv_bn(y, branch_channels, 1, f"ppm{b}", sync_bn=sync_bn))
    x = PyramidConv2D(8 * base_width, 3, name="head_conv")(pyramid)
    x = batch_norm("head_bn", sync_bn)(x)
    x = keras.layers.ReLU(name="head_relu")(x)
    logits = _classifier(x, num_classes, dropout, "head")
    main = ResizeLike(dtype="float32", name="logits")([logits, images])
    name = name or f"pspnet_{backbone}"
    if not aux:
        return keras.Model(images, main, name=name)

    aux_hidden = conv_bn(features["C4"], 4 * base_width, 3, "aux", sync_bn=sync_bn)
    aux_logits = _classifier(aux_hidden, num_classes, dropout, "aux")
    aux_out = ResizeLike(dtype="float32", name="aux_logits")([aux_logits, images])
    return keras.Model(images, {"main": main, "aux": aux_out}, name=name)


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

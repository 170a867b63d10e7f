"""ResNet-18/34/50/101/152 backbones returning the C2..C5 feature maps.

Two stems:
- "deep" (PSPNet): 3x3/64 stride 2, 3x3/64, 3x3/128, 3x3 max pool stride 2.
- "standard" (Keras Applications): 7x7/64 stride 2, 3x3 max pool stride 2.

Bottleneck blocks come in two layouts (`stride_on`): "1x1", the v1 variant of
the original PSPNet (Caffe) and Keras Applications, strides the first 1x1
convolution; "3x3", PyTorch's layout (torchvision, semseg, mmsegmentation;
"ResNet v1.5"), strides the 3x3. Same weight shapes, different computation:
converted PyTorch weights need "3x3". Convs
carry no bias (every conv is followed by BatchNormalization); a Keras
Applications conv bias is folded into the BN moving mean when its weights are
loaded (see load_imagenet_weights).

Layer names follow Keras Applications (`conv2_block1_0_conv`, `conv4_block23_3_bn`,
`conv5_block3_out`, ...), so ImageNet weights transfer by name. The deep stem's
layers are `conv1_1_*`, `conv1_2_*`, `conv1_3_*`.

Output stride 8 / 16 replaces the striding of stage 4 and/or 5 by dilation
(stage 4 dilation 2, stage 5 dilation 4 at stride 8; stage 5 dilation 2 at
stride 16) in every 3x3 conv of the stage, as PSPNet (Caffe) and semseg do;
with contract_dilation (mmsegmentation's ResNetV1c "-D8" models) the first
block of a dilated stage uses half the stage's dilation. In basic blocks the
first conv of a stage (the one that would have strided) keeps the previous
stage's dilation. This is the exact "a trous" conversion: with the same
weights, the stride-8 C5 taken at every 4th pixel equals the stride-32 C5
(tested). Dilation leaves the weight shapes unchanged.
"""
import keras

from data.normalization import INPUT_MEAN, INPUT_STD
from models.layers import FusedBatchNormalization, PaddedConv2D

# Keras Applications' value, so its ImageNet BN statistics transfer unchanged
# (PyTorch/Caffe use 1e-5: the difference is immaterial).
BN_EPSILON = 1.001e-5
# Keras momentum 0.9 == PyTorch momentum 0.1, the value the PSPNet reference trains with.
BN_MOMENTUM = 0.9

# What Keras Applications ResNet weights expect instead ("caffe" mode): BGR minus this mean, unscaled.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# depth -> (block type, blocks per stage 2..5)
_LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}



def resnet_depth(block_type, blocks_per_stage):
    """The depth of the ResNet with these blocks, e.g. ("bottleneck", (3, 4, 23, 3)) -> 101; None if none has them."""
    return next((d for d, layout in _LAYOUTS.items() if layout == (block_type, tuple(blocks_per_stage))), None)


# output stride -> (strides, dilations) of stages 2..5
_STRIDES = {
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
}


def batch_norm(name, sync_bn=False, epsilon=BN_EPSILON):
    """The project's BatchNormalization: fused kernel in training, synchronized across replicas when asked."""
    return FusedBatchNormalization(momentum=BN_MOMENTUM, epsilon=epsilon, synchronized=sync_bn, name=name)


def conv_bn(x, filters, kernel_size, name, *, stride=1, dilation=1, relu=True, sync_bn=False,
            bn_epsilon=BN_EPSILON):
    """Conv (no bias) + BN (+ ReLU): layers `{name}_conv`, `{name}_bn`, `{name}_relu`.

    A strided conv pads symmetrically (PaddedConv2D), as Caffe/PyTorch: Keras
    "same" would pad only bottom/right on even sizes. Either way the output size
    is ceil(size / stride).
    """
    conv = dict(strides=stride, dilation_rate=dilation, use_bias=False, kernel_initializer="he_normal",
                name=f"{name}_conv")
    if stride > 1 and kernel_size > 1:
        x = PaddedConv2D(filters, kernel_size, pad=(kernel_size - 1) // 2, **conv)(x)
    else:
        x = keras.layers.Conv2D(filters, kernel_size, padding="same", **conv)(x)
    x = batch_norm(f"{name}_bn", sync_bn, bn_epsilon)(x)
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def _bottleneck(x, filters, stride, dilation, input_dilation, name, sync_bn, stride_on="1x1",
                bn_epsilon=BN_EPSILON):
    del input_dilation  # the 3x3 conv already sees the subsampled (or dilated) grid
    out_channels = 4 * filters
    norm = {"sync_bn": sync_bn, "bn_epsilon": bn_epsilon}
    shortcut = x
    if stride != 1 or x.shape[-1] != out_channels:
        shortcut = conv_bn(x, out_channels, 1, f"{name}_0", stride=stride, relu=False, **norm)
    stride_1x1, stride_3x3 = (stride, 1) if stride_on == "1x1" else (1, stride)
    y = conv_bn(x, filters, 1, f"{name}_1", stride=stride_1x1, **norm)
    y = conv_bn(y, filters, 3, f"{name}_2", stride=stride_3x3, dilation=dilation, **norm)
    y = conv_bn(y, out_channels, 1, f"{name}_3", relu=False, **norm)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _basic(x, filters, stride, dilation, input_dilation, name, sync_bn, stride_on="1x1", bn_epsilon=BN_EPSILON):
    del stride_on  # basic blocks have no 1x1 conv on the main path
    norm = {"sync_bn": sync_bn, "bn_epsilon": bn_epsilon}
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv_bn(x, filters, 1, f"{name}_0", stride=stride, relu=False, **norm)
    # This conv takes the place of the strided one, so it reads the input grid
    # with the input's dilation (as torchvision's replace_stride_with_dilation).
    y = conv_bn(x, filters, 3, f"{name}_1", stride=stride, dilation=input_dilation, **norm)
    y = conv_bn(y, filters, 3, f"{name}_2", dilation=dilation, relu=False, **norm)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def build_resnet(
    depth,
    *,
    stem="deep",
    output_stride=8,
    base_width=64,
    stride_on="1x1",
    bn_epsilon=BN_EPSILON,
    stem_width=None,
    contract_dilation=False,
    sync_bn=False,
    input_shape=(None, None, 3),
    name=None,
):
    """Builds a ResNet feature extractor.

    Args:
      depth: 18, 34 (basic blocks), 50, 101 or 152 (bottlenecks).
      stem: "deep" (PSPNet's three 3x3 convs) or "standard" (7x7, Keras Applications).
      output_stride: 8, 16 or 32: stride of C5 (and of C4 when 8).
      base_width: channels of the first stage (64 in the papers); every channel
        count scales with it, so tests can build tiny models.
      stride_on: "1x1" (Caffe / Keras Applications) or "3x3" (PyTorch's layout):
        which conv of a bottleneck carries the stage's stride.
      bn_epsilon: BatchNormalization epsilon (PyTorch's is 1e-5; the default is
        Keras Applications').
      stem_width: channels of the deep stem's first two convs (the third has
        twice as many); default base_width (PSPNet, semseg: 64/64/128);
        mmsegmentation's ResNetV1c uses base_width / 2 (32/32/64).
      contract_dilation: the first block of a dilated stage uses half the
        stage's dilation (mmsegmentation's contract_dilation=True); otherwise
        every block of the stage uses the full dilation (Caffe PSPNet, semseg).
        Bottleneck backbones only.
      sync_bn: synchronized BatchNormalization across tf.distribute replicas.
      input_shape: (H, W, 3); None for any size.

    Returns:
      keras.Model: images [B, H, W, 3] float32 -> {"C2", "C3", "C4", "C5"}, each
      [B, h, w, c] in the compute dtype, with h = ceil(H / stride) for strides
      C2: 4, C3: 8, C4: 16 (8 at output stride 8), C5: output_stride; c is
      (64, 128, 256, 512) * base_width / 64 for basic blocks, four times that
      for bottlenecks.
    """
    if depth not in _LAYOUTS:
        raise ValueError(f"ResNet depth must be one of {sorted(_LAYOUTS)}, got {depth}.")
    if stem not in ("deep", "standard"):
        raise ValueError(f'stem must be "deep" or "standard", got {stem!r}.')
    if stride_on not in ("1x1", "3x3"):
        raise ValueError(f'stride_on must be "1x1" or "3x3", got {stride_on!r}.')
    if output_stride not in _STRIDES:
        raise ValueError(f"output_stride must be one of {sorted(_STRIDES)}, got {output_stride}.")
    block_type, blocks_per_stage = _LAYOUTS[depth]
    if contract_dilation and block_type != "bottleneck":
        raise ValueError(f"contract_dilation is implemented for bottleneck ResNets (50/101/152), not ResNet{depth}.")
    block = _bottleneck if block_type == "bottleneck" else _basic
    strides, dilations = _STRIDES[output_stride]
    w = base_width

    norm = {"sync_bn": sync_bn, "bn_epsilon": bn_epsilon}
    images = keras.Input(shape=input_shape, name="images")
    if stem == "deep":
        s = stem_width or w
        x = conv_bn(images, s, 3, "conv1_1", stride=2, **norm)
        x = conv_bn(x, s, 3, "conv1_2", **norm)
        x = conv_bn(x, 2 * s, 3, "conv1_3", **norm)
    else:
        x = conv_bn(images, w, 7, "conv1", stride=2, **norm)
    # Zero padding before the max pool is exact: its input is post-ReLU (>= 0).
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)

    features = {}
    input_dilation = 1
    for stage, (num_blocks, stride, dilation) in enumerate(zip(blocks_per_stage, strides, dilations), start=2):
        filters = w * 2 ** (stage - 2)
        for i in range(num_blocks):
            first = i == 0
            block_dilation = dilation // 2 if first and contract_dilation and dilation > 1 else dilation
            x = block(
                x,
                filters,
                stride if first else 1,
                block_dilation,
                input_dilation if first else dilation,
                f"conv{stage}_block{i + 1}",
                sync_bn,
                stride_on,
                bn_epsilon,
            )
        input_dilation = dilation
        features[f"C{stage}"] = x
    return keras.Model(images, features, name=name or f"resnet{depth}")


_KERAS_APPLICATIONS = {
    50: keras.applications.ResNet50,
    101: keras.applications.ResNet101,
    152: keras.applications.ResNet152,
}


def _keras_applications_resnet(depth, weights):
    """Keras Applications ResNet holding `weights` ("imagenet" or a file path)."""
    constructor = _KERAS_APPLICATIONS[depth]
    if weights == "imagenet":
        return constructor(include_top=False, weights="imagenet", input_shape=(None, None, 3))
    weights = str(weights)
    if weights.endswith(".keras"):
        from models.keras_files import read_keras_file  # safe_mode=True, one-line refusals

        return read_keras_file(weights, flag="backbone weights")
    # A weights file fits only the topology it was saved from: try both heads.
    errors = []
    for include_top in (False, True):
        try:
            return constructor(include_top=include_top, weights=weights)
        except (ValueError, OSError) as error:
            errors.append(str(error).splitlines()[0] if str(error) else repr(error))
    raise ValueError(
        f"{weights}: not a Keras Applications ResNet{depth} weights file ({'; '.join(errors)})."
    )


def load_imagenet_weights(backbone_model, depth, weights="imagenet", *, caffe_input=False):
    """Copies Keras Applications ResNet50/101/152 weights into a standard-stem backbone.

    Layers are matched by name (ours follow Keras Applications, so this is also
    its layer order) and every shape is checked. Keras Applications convs have a
    bias and ours do not: since each conv feeds a BatchNormalization,
    BN(conv(x) + b) == BN'(conv(x)) with BN' moving_mean = moving_mean - b, which
    is exact at inference and irrelevant in training (batch statistics absorb b).
    Works for any output stride (dilation does not change weight shapes).

    The weights were trained on Keras Applications' "caffe" input
    (`keras.applications.resnet.preprocess_input`: RGB -> BGR, minus the
    ImageNet mean [103.939, 116.779, 123.68], no scaling). Unless caffe_input
    is True, that normalisation is folded into the first convolution so the
    backbone takes this project's input, (RGB - INPUT_MEAN) / INPUT_STD: the
    kernel's input channels are reordered to RGB and scaled by INPUT_STD, and
    the constant offset goes into conv1_bn's moving mean. This is exact away
    from the image border; at the border, zero padding means INPUT_MEAN here and
    the caffe mean there, which differ by under 0.5 grey levels.

    Args:
      backbone_model: a model from build_resnet(depth, stem="standard", base_width=64).
      depth: 50, 101 or 152.
      weights: "imagenet" (downloaded by Keras Applications; needs internet) or a
        local path to a Keras Applications ResNet `.h5` / `.weights.h5` / `.keras` file.
      caffe_input: keep the weights' own input normalisation (see above).
    """
    if depth not in _KERAS_APPLICATIONS:
        raise ValueError(f"Keras Applications has ImageNet weights for ResNet50/101/152 only, not ResNet{depth}.")
    layer_names = {layer.name for layer in backbone_model.layers}
    if "conv1_conv" not in layer_names:
        raise ValueError('ImageNet weights from Keras Applications need the standard stem: build with stem="standard".')
    source = _keras_applications_resnet(depth, weights)
    source_layers = {layer.name: layer for layer in source.layers}

    for layer in backbone_model.layers:
        if not layer.weights:
            continue
        if layer.name not in source_layers:
            raise ValueError(f"Keras Applications ResNet{depth} has no layer {layer.name!r}: wrong depth?")
        src = source_layers[layer.name].get_weights()
        if isinstance(layer, keras.layers.Conv2D):
            values = [src[0]]
        else:  # BatchNormalization: gamma, beta, moving mean, moving variance
            gamma, beta, mean, variance = src
            conv_bias = source_layers[layer.name[: -len("_bn")] + "_conv"].get_weights()[1]
            values = [gamma, beta, mean - conv_bias, variance]
        for target, value in zip(layer.weights, values):
            if tuple(target.shape) != value.shape:
                raise ValueError(
                    f"{layer.name}: weight shape {tuple(target.shape)} != Keras Applications {value.shape}; "
                    "build the backbone with base_width=64."
                )
        layer.set_weights(values)
    if not caffe_input:
        _fold_input_normalization(backbone_model)


def _fold_input_normalization(backbone_model):
    """Makes conv1 (trained on caffe-normalised BGR) take (RGB - INPUT_MEAN) / INPUT_STD instead."""
    import numpy as np

    conv, bn = backbone_model.get_layer("conv1_conv"), backbone_model.get_layer("conv1_bn")
    kernel = conv.get_weights()[0]  # [kh, kw, 3 (BGR), filters]
    rgb_kernel = kernel[:, :, ::-1, :]  # input channels in RGB order
    std = np.asarray(INPUT_STD, np.float32)
    # caffe input (RGB order) = normalised * std + (INPUT_MEAN - caffe mean)
    offset = np.asarray(INPUT_MEAN, np.float32) - np.asarray(_CAFFE_MEAN_BGR[::-1], np.float32)
    conv.set_weights([rgb_kernel * std[None, None, :, None]])
    gamma, beta, mean, variance = bn.get_weights()
    constant = np.einsum("hwcf,c->f", rgb_kernel, offset)  # what the offset adds to every output
    bn.set_weights([gamma, beta, mean - constant, variance])

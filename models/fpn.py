"""ResNet + Feature Pyramid Network (Lin et al. 2017): P2..P6 for Mask R-CNN.

P5..P2: a 1x1 lateral conv on C5..C2, added to the nearest-neighbour upsampled
coarser level (top-down path), then a 3x3 conv. P6 is P5 subsampled by 2 (1x1
max pool, stride 2), used by the RPN only. Strides: P2 4, P3 8, P4 16, P5 32,
P6 64.

Upsampling: by default 2x (`UpSampling2D`), which needs input sizes that are
multiples of 32 (the COCO pipeline pads to that). `upsample_to_lateral=True`
resizes to the lateral's own size instead (torchvision's
`F.interpolate(size=..., mode="nearest")`: source index floor(i * in / out)),
which gives the same result on multiples of 32 and works for any size.
`batch_norm=True` puts a BatchNormalization after every FPN conv (no bias),
as torchvision's maskrcnn_resnet50_fpn_v2.
"""
import keras
import tensorflow as tf

from models.layers import SameConv2D
from models.resnet import BN_EPSILON, batch_norm as make_batch_norm, build_resnet

LEVEL_STRIDES = {"P2": 4, "P3": 8, "P4": 16, "P5": 32, "P6": 64}


@keras.saving.register_keras_serializable(package="models")
class NearestResizeLike(keras.layers.Layer):
    """Nearest-neighbour resize to a reference's spatial size, PyTorch's convention.

    Output pixel i reads input pixel min(floor(i * in / out), in - 1) (PyTorch's
    F.interpolate(mode="nearest") and TF's resize without half-pixel centres).
    Call: [x [B, h, w, C], reference [B, H, W, ...]] -> [B, H, W, C].
    """

    def call(self, inputs):
        x, reference = inputs
        return tf.raw_ops.ResizeNearestNeighbor(images=x, size=tf.shape(reference)[1:3], align_corners=False,
                                                half_pixel_centers=False)

    def compute_output_shape(self, input_shapes):
        x_shape, reference_shape = input_shapes
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])


def _fpn_conv(x, channels, kernel_size, name, batch_norm, bn_epsilon):
    """Conv (with bias), or conv without bias + BN (`{name}_bn`) when batch_norm; 'same' padding, stride 1.

    3x3 convs are SameConv2D: at P2 their gradient would otherwise need 590 MiB im2col buffers (1x1 convs
    need none: TensorFlow runs them as matmuls).
    """
    conv = SameConv2D if kernel_size > 1 else keras.layers.Conv2D
    x = conv(channels, kernel_size, padding="same", use_bias=not batch_norm, name=name)(x)
    if batch_norm:
        x = make_batch_norm(f"{name}_bn", epsilon=bn_epsilon)(x)
    return x


def build_resnet_fpn(depth=50, *, channels=256, base_width=64, sync_bn=False, input_shape=(None, None, 3),
                     stride_on="1x1", bn_epsilon=BN_EPSILON, upsample_to_lateral=False, batch_norm=False,
                     name="resnet_fpn"):
    """ResNet (standard stem, output stride 32) with an FPN on top.

    Args:
      depth: ResNet depth (18, 34, 50, 101, 152).
      channels: FPN channels (256 in the paper; small in tests).
      base_width: ResNet first-stage width (64 in the paper).
      sync_bn: synchronized BatchNormalization in the ResNet.
      input_shape: (H, W, 3), H and W multiples of 32 or None.
      stride_on, bn_epsilon: the ResNet's (see models.resnet.build_resnet);
        torchvision's layout is "3x3", 1e-5 (also the FPN BN's epsilon).
      upsample_to_lateral: top-down upsampling to each lateral's size (any input size).
      batch_norm: BN after each FPN conv (torchvision's v2 FPN).

    Returns:
      keras.Model: images [B, H, W, 3] float32 -> {"P2": [B, H/4, W/4, channels],
      ..., "P6": [B, H/64, W/64, channels]} (sizes rounded up). The ResNet is
      the sublayer named "backbone" (freeze it with
      model.get_layer("backbone").trainable = False).
    """
    backbone = build_resnet(depth, stem="standard", output_stride=32, base_width=base_width, sync_bn=sync_bn,
                            stride_on=stride_on, bn_epsilon=bn_epsilon, input_shape=input_shape, name="backbone")
    images = keras.Input(shape=input_shape, name="images")
    c = backbone(images)
    laterals = {level: _fpn_conv(c[f"C{level}"], channels, 1, f"fpn_lateral{level}", batch_norm, bn_epsilon)
                for level in range(2, 6)}
    top_down = laterals[5]
    merged = {5: top_down}
    for level in (4, 3, 2):
        if upsample_to_lateral:
            upsampled = NearestResizeLike(name=f"fpn_up{level + 1}")([top_down, laterals[level]])
        else:
            upsampled = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"fpn_up{level + 1}")(top_down)
        top_down = keras.layers.Add(name=f"fpn_merge{level}")([upsampled, laterals[level]])
        merged[level] = top_down
    outputs = {f"P{level}": _fpn_conv(x, channels, 3, f"fpn_output{level}", batch_norm, bn_epsilon)
               for level, x in merged.items()}
    outputs["P6"] = keras.layers.MaxPooling2D(1, strides=2, name="fpn_p6")(outputs["P5"])
    return keras.Model(images, {k: outputs[k] for k in LEVEL_STRIDES}, name=name)

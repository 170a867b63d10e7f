"""ResNet + Feature Pyramid Network (Lin et al. 2017): P2..P6 for Mask R-CNN.

P5..P2: a 1x1 lateral conv on C5..C2, added to the nearest-neighbour 2x
upsampled coarser level (top-down path), then a 3x3 conv. P6 is P5 subsampled
by 2 (1x1 max pool, stride 2), used by the RPN only. Strides: P2 4, P3 8, P4 16,
P5 32, P6 64. Input sizes must be multiples of 32 (the COCO pipeline pads to
that), so every upsampled level matches its lateral.
"""
import keras

from models.resnet import build_resnet

LEVEL_STRIDES = {"P2": 4, "P3": 8, "P4": 16, "P5": 32, "P6": 64}


def build_resnet_fpn(depth=50, *, channels=256, base_width=64, sync_bn=False, input_shape=(None, None, 3),
                     name="resnet_fpn"):
    """ResNet (standard stem, output stride 32) with an FPN on top.

    Args:
      depth: ResNet depth (18, 34, 50, 101, 152).
      channels: FPN channels (256 in the paper; small in tests).
      base_width: ResNet first-stage width (64 in the paper).
      sync_bn: synchronized BatchNormalization in the ResNet.
      input_shape: (H, W, 3), H and W multiples of 32 or None.

    Returns:
      keras.Model: images [B, H, W, 3] float32 -> {"P2": [B, H/4, W/4, channels],
      ..., "P6": [B, H/64, W/64, channels]}. The ResNet is the sublayer named
      "backbone" (freeze it with model.get_layer("backbone").trainable = False).
    """
    backbone = build_resnet(depth, stem="standard", output_stride=32, base_width=base_width, sync_bn=sync_bn,
                            input_shape=input_shape, name="backbone")
    images = keras.Input(shape=input_shape, name="images")
    c = backbone(images)
    laterals = {level: keras.layers.Conv2D(channels, 1, name=f"fpn_lateral{level}")(c[f"C{level}"])
                for level in range(2, 6)}
    top_down = laterals[5]
    merged = {5: top_down}
    for level in (4, 3, 2):
        upsampled = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"fpn_up{level + 1}")(top_down)
        top_down = keras.layers.Add(name=f"fpn_merge{level}")([upsampled, laterals[level]])
        merged[level] = top_down
    outputs = {f"P{level}": keras.layers.Conv2D(channels, 3, padding="same", name=f"fpn_output{level}")(x)
               for level, x in merged.items()}
    outputs["P6"] = keras.layers.MaxPooling2D(1, strides=2, name="fpn_p6")(outputs["P5"])
    return keras.Model(images, {k: outputs[k] for k in LEVEL_STRIDES}, name=name)

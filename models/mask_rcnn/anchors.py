"""RPN anchors: one box size per FPN level, several aspect ratios, on every feature-map pixel.

torchvision's AnchorGenerator layout, so that converted RPN weights read the
same anchors:
- Base anchors of size s and aspect ratio r (height / width) are centred on
  the origin, half-extents w = s / sqrt(r) / 2 and h = s * sqrt(r) / 2
  computed in float32, rounded to integers (half to even): [-w, -h, w, h].
- Level k's anchors are the base anchors shifted to (x, y) = (j * stride_w,
  i * stride_h) for every pixel (i, j) of its map (the pixel's top-left
  corner, not its centre), with stride = padded image size // map size
  (integer division, per axis: a 13-pixel P6 of an 800-pixel input has
  stride 61, not 64).
- Order: level, then row, then column, then ratio (as the RPN head's outputs
  are flattened).
Boxes here are (y1, x1, y2, x2), the project's convention.
"""
import keras
import numpy as np
import tensorflow as tf

ANCHOR_SIZES = (32, 64, 128, 256, 512)  # one per level, P2..P6
ASPECT_RATIOS = (0.5, 1.0, 2.0)


def base_anchors(size, aspect_ratios=ASPECT_RATIOS):
    """[A, 4] float32 (y1, x1, y2, x2) centred on the origin, rounded as torchvision rounds them."""
    ratios = np.asarray(aspect_ratios, np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1) / h_ratios
    half_w = w_ratios * np.float32(size) / np.float32(2)
    half_h = h_ratios * np.float32(size) / np.float32(2)
    return np.round(np.stack([-half_h, -half_w, half_h, half_w], axis=1)).astype(np.float32)


def level_anchors(base, feature_size, image_size):
    """Anchors of one level. base [A, 4]; feature_size, image_size: (h, w) int32 tensors -> [h * w * A, 4]."""
    stride = image_size // feature_size
    ys = tf.cast(tf.range(feature_size[0]) * stride[0], tf.float32)
    xs = tf.cast(tf.range(feature_size[1]) * stride[1], tf.float32)
    y, x = tf.meshgrid(ys, xs, indexing="ij")
    shifts = tf.reshape(tf.stack([y, x, y, x], axis=-1), [-1, 1, 4])
    return tf.reshape(shifts + base[None], [-1, 4])


@keras.saving.register_keras_serializable(package="models")
class Anchors(keras.layers.Layer):
    """Anchors of every level for a batch of padded images (the same for every image of a batch).

    Args:
      sizes: one anchor size per level (image pixels).
      aspect_ratios: height / width ratios, the same on every level.

    Call: [images [B, H, W, 3], P_first, ..., P_last] with P_k [B, H_k, W_k, C]
    -> anchors [1, N, 4] float32 (y1, x1, y2, x2), N = sum_k H_k * W_k * A.
    """

    def __init__(self, sizes=ANCHOR_SIZES, aspect_ratios=ASPECT_RATIOS, **kwargs):
        # A geometry layer, as Proposals and Detections: no autocast, so models.precision keeps it float32.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.sizes = tuple(int(s) for s in sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)

    @property
    def num_anchors(self):
        """A, the anchors per feature-map pixel."""
        return len(self.aspect_ratios)

    def call(self, inputs):
        images, *features = inputs
        if len(features) != len(self.sizes):
            raise ValueError(f"Anchors: {len(self.sizes)} sizes for {len(features)} feature maps")
        image_size = tf.shape(images)[1:3]
        anchors = [level_anchors(tf.constant(base_anchors(size, self.aspect_ratios)), tf.shape(f)[1:3], image_size)
                   for size, f in zip(self.sizes, features)]
        return tf.concat(anchors, axis=0)[None]

    def compute_output_shape(self, input_shapes):
        return (1, None, 4)

    def get_config(self):
        return {**super().get_config(), "sizes": self.sizes, "aspect_ratios": self.aspect_ratios}

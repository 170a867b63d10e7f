"""The detector's box branch: class logits and class-specific box deltas of each RoI (torchvision's box head).

v1 (TwoMLPHead + FastRCNNPredictor): flatten the RoI's 7x7xC features, two
fully connected layers of 1024 + ReLU. v2 (FastRCNNConvFCHead): num_convs x
(3x3 conv without bias + BatchNormalization + ReLU), flatten, one fully
connected layer of 1024 + ReLU. Both end in two linear predictors: K + 1
class logits (0 = background) and (K + 1) x 4 box deltas (dy, dx, dh, dw),
decoded against the RoI with weights (10, 10, 5, 5).

The flatten here is [H, W, C] (Keras); torchvision's is [C, H, W]: the
converter permutes the first fully connected layer's input rows
(models.torch_weights.chw_to_hwc_permutation).
"""
import keras
import tensorflow as tf

from models.mask_rcnn.heads import _merge_rois, _split_rois
from models.resnet import batch_norm


@keras.saving.register_keras_serializable(package="models")
class BoxHead(keras.layers.Layer):
    """Call: RoI features [B, R, s, s, C] -> [class logits [B, R, K + 1] float32,
    box deltas [B, R, K + 1, 4] float32 (dy, dx, dh, dw) per class].

    Args:
      num_classes: K (background not counted).
      units: width of the fully connected layers (1024).
      num_fc: fully connected layers after the convs (2 in v1, 1 in v2).
      num_convs, conv_channels: the v2 head's convs (0 in v1).
      bn_epsilon: the convs' BatchNormalization epsilon.
    """

    def __init__(self, num_classes, units=1024, num_fc=2, num_convs=0, conv_channels=256, bn_epsilon=1e-5,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.units = int(units)
        self.num_fc = int(num_fc)
        self.num_convs = int(num_convs)
        self.conv_channels = int(conv_channels)
        self.bn_epsilon = float(bn_epsilon)
        self.convs = [keras.layers.Conv2D(conv_channels, 3, padding="same", use_bias=False, name=f"conv{i + 1}")
                      for i in range(num_convs)]
        self.norms = [batch_norm(f"conv{i + 1}_bn", epsilon=bn_epsilon) for i in range(num_convs)]
        self.flatten = keras.layers.Flatten(name="flatten")
        self.fcs = [keras.layers.Dense(units, activation="relu", name=f"fc{i + 1}") for i in range(num_fc)]
        self.class_logits = keras.layers.Dense(num_classes + 1, dtype="float32", name="class_logits",
                                               kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))
        self.box_deltas = keras.layers.Dense(4 * (num_classes + 1), dtype="float32", name="box_deltas",
                                             kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))

    def build(self, input_shape):
        size, channels = input_shape[2], input_shape[4]
        for conv, norm in zip(self.convs, self.norms):
            conv.build((None, size, size, channels))
            channels = self.conv_channels
            norm.build((None, size, size, channels))
        width = size * size * channels
        for fc in self.fcs:
            fc.build((None, width))
            width = self.units
        self.class_logits.build((None, width))
        self.box_deltas.build((None, width))

    def call(self, features, training=None):
        x = _merge_rois(features)
        for conv, norm in zip(self.convs, self.norms):
            x = tf.nn.relu(norm(conv(x), training=training))
        x = self.flatten(x)
        for fc in self.fcs:
            x = fc(x)
        logits = _split_rois(self.class_logits(x), features)
        deltas = _split_rois(tf.reshape(self.box_deltas(x), [-1, self.num_classes + 1, 4]), features)
        return logits, deltas

    def compute_output_shape(self, input_shape):
        rois = tuple(input_shape[:2])
        return (*rois, self.num_classes + 1), (*rois, self.num_classes + 1, 4)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "units": self.units, "num_fc": self.num_fc,
                "num_convs": self.num_convs, "conv_channels": self.conv_channels, "bn_epsilon": self.bn_epsilon}

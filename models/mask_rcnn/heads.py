"""Mask R-CNN RoI heads: the mask branch and the class branch.

Both take RoIAlign features of R RoIs per image, [B, R, s, s, C], and run their
layers on the B * R crops at once. Class id k of a RoI indexes channel k of the
outputs, with channel 0 the background (the mask loss and the class picking
rely on this), so both heads output num_classes + 1 channels.
"""
import keras
import tensorflow as tf

from models.resnet import batch_norm as make_batch_norm


def _merge_rois(x):
    """[B, R, *rest] -> [B * R, *rest] (rest static)."""
    return tf.reshape(x, [-1, *x.shape[2:]])


def _split_rois(x, like):
    """[B * R, *rest] -> [B, R, *rest] with B, R taken from `like`."""
    return tf.reshape(x, tf.concat([tf.shape(like)[:2], tf.shape(x)[1:]], axis=0))


@keras.saving.register_keras_serializable(package="models")
class MaskHead(keras.layers.Layer):
    """Mask branch: num_convs x (3x3 conv + ReLU), 2x2 stride-2 transposed conv + ReLU, 1x1 conv.

    Call: roi features [B, R, s, s, C] -> mask logits [B, R, 2s, 2s, num_classes + 1]
    float32 (per-pixel sigmoid logits, one channel per class, channel 0 unused).
    The paper's head: s = 14, channels = 256, num_convs = 4 -> 28 x 28 masks
    (torchvision's MaskRCNNHeads + MaskRCNNPredictor). batch_norm=True: each
    3x3 conv without bias, then BatchNormalization (epsilon bn_epsilon), then
    ReLU (torchvision's maskrcnn_resnet50_fpn_v2).
    """

    def __init__(self, num_classes, channels=256, num_convs=4, batch_norm=False, bn_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.num_convs = int(num_convs)
        self.batch_norm = bool(batch_norm)
        self.bn_epsilon = float(bn_epsilon)
        self.convs = [keras.layers.Conv2D(channels, 3, padding="same", activation=None if batch_norm else "relu",
                                          use_bias=not batch_norm, kernel_initializer="he_normal",
                                          name=f"conv{i + 1}")
                      for i in range(num_convs)]
        self.norms = [make_batch_norm(f"conv{i + 1}_bn", epsilon=bn_epsilon) for i in range(num_convs if batch_norm
                                                                                             else 0)]
        self.upsample = keras.layers.Conv2DTranspose(channels, 2, strides=2, activation="relu",
                                                     kernel_initializer="he_normal", name="deconv")
        # Small initial logits: every mask starts near 0.5, as in Detectron (std 0.001).
        self.predict = keras.layers.Conv2D(num_classes + 1, 1, dtype="float32", name="logits",
                                           kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))

    def build(self, input_shape):
        # Sublayers are built here with their shapes so that saved weights load into them.
        size = input_shape[2]
        shape = (None, size, size, input_shape[4])
        for conv in self.convs:
            conv.build(shape)
            shape = (None, size, size, self.channels)
        for norm in self.norms:
            norm.build(shape)
        self.upsample.build(shape)
        self.predict.build((None, 2 * size, 2 * size, self.channels))

    def call(self, features, training=None):
        x = _merge_rois(features)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.batch_norm:
                x = tf.nn.relu(self.norms[i](x, training=training))
        return _split_rois(self.predict(self.upsample(x)), features)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:2], 2 * input_shape[2], 2 * input_shape[3], self.num_classes + 1)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "channels": self.channels,
                "num_convs": self.num_convs, "batch_norm": self.batch_norm, "bn_epsilon": self.bn_epsilon}


@keras.saving.register_keras_serializable(package="models")
class ClassHead(keras.layers.Layer):
    """Class branch: flatten, 2 x (fully connected + ReLU), fully connected to num_classes + 1 logits.

    Call: roi features [B, R, s, s, C] -> class logits [B, R, num_classes + 1]
    float32 (softmax logits, 0 = background). The paper's head: s = 7, units = 1024.
    """

    def __init__(self, num_classes, units=1024, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.units = int(units)
        self.flatten = keras.layers.Flatten(name="flatten")
        self.fc1 = keras.layers.Dense(units, activation="relu", name="fc1")
        self.fc2 = keras.layers.Dense(units, activation="relu", name="fc2")
        self.predict = keras.layers.Dense(num_classes + 1, dtype="float32", name="logits",
                                          kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))

    def build(self, input_shape):
        self.fc1.build((None, input_shape[2] * input_shape[3] * input_shape[4]))
        self.fc2.build((None, self.units))
        self.predict.build((None, self.units))

    def call(self, features):
        x = self.fc2(self.fc1(self.flatten(_merge_rois(features))))
        return _split_rois(self.predict(x), features)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:2], self.num_classes + 1)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "units": self.units}

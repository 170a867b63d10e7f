"""The detector's RoI heads (torchvision's roi_heads): the box branch, the mask branch, and the class-picked mask.

Each head takes RoIAlign features of R RoIs per image, [B, R, s, s, C], and runs
its layers on the B * R crops at once. Class id k of a RoI indexes channel k of
the outputs, channel 0 the background (the mask loss and the class picking rely
on this), so both heads output K + 1 channels. Class picking happens in the
graph (PredictClass, PickMaskChannel), so an exported model keeps it: the
detected (or most likely) class selects its channel of the mask branch.

Box branch (BoxHead):

v1 (TwoMLPHead + FastRCNNPredictor): flatten the RoI's 7x7xC features, two
fully connected layers of 1024 + ReLU. v2 (FastRCNNConvFCHead): num_convs x
(3x3 conv without bias + BatchNormalization + ReLU), flatten, one fully
connected layer of 1024 + ReLU. Both end in two linear predictors: K + 1
class logits (0 = background) and (K + 1) x 4 box deltas (dy, dx, dh, dw),
decoded against the RoI with weights (10, 10, 5, 5).

The flatten here is [H, W, C] (Keras); torchvision's is [C, H, W]: the
converter permutes the first fully connected layer's input rows
(models.convert.torch_reader.chw_to_hwc_permutation).
"""
import keras
import tensorflow as tf

from models.resnet import batch_norm as make_batch_norm  # MaskHead's batch_norm flag would hide it


def _merge_rois(x):
    """[B, R, *rest] -> [B * R, *rest] (rest static)."""
    return tf.reshape(x, [-1, *x.shape[2:]])


def _split_rois(x, like):
    """[B * R, *rest] -> [B, R, *rest] with B, R taken from `like`."""
    return tf.reshape(x, tf.concat([tf.shape(like)[:2], tf.shape(x)[1:]], axis=0))


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
        self.norms = [make_batch_norm(f"conv{i + 1}_bn", epsilon=bn_epsilon) for i in range(num_convs)]
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
        norms = num_convs if batch_norm else 0
        self.norms = [make_batch_norm(f"conv{i + 1}_bn", epsilon=bn_epsilon) for i in range(norms)]
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
class PredictClass(keras.layers.Layer):
    """Most likely object class of each RoI and its probability.

    Call: class logits [B, R, K + 1] (channel 0 = background) ->
    [class_ids [B, R] int32 in 1..K, scores [B, R] float32]. The background is
    left out of the argmax (the RoIs are known objects: oracle boxes, or
    detections) but not of the softmax, so a RoI that looks like background
    gets a low score.
    """

    def call(self, class_logits):
        probs = tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1)
        class_ids = tf.argmax(probs[..., 1:], axis=-1, output_type=tf.int32) + 1
        scores = tf.gather(probs, class_ids, axis=-1, batch_dims=2)
        return class_ids, scores


def pick_mask_channel(mask_logits, class_ids):
    """mask_logits [B, R, h, w, K + 1], class_ids [B, R] int -> probabilities [B, R, h, w] float32."""
    # axis=4, not -1: tf2onnx 1.17 turns a batched gather on a negative axis into a Transpose with a wrong perm.
    picked = tf.gather(tf.cast(mask_logits, tf.float32), tf.cast(class_ids, tf.int32), axis=4, batch_dims=2)
    return tf.sigmoid(picked)


@keras.saving.register_keras_serializable(package="models")
class PickMaskChannel(keras.layers.Layer):
    """Call: [mask logits [B, R, h, w, K + 1], class_ids [B, R] int] -> mask probabilities [B, R, h, w] float32."""

    def call(self, inputs):
        mask_logits, class_ids = inputs
        return pick_mask_channel(mask_logits, class_ids)

    def compute_output_shape(self, input_shapes):
        return input_shapes[0][:4]

"""Region proposal network: the head on every FPN level, and proposals from its outputs (torchvision's RPN).

Head (shared by the levels): num_convs x (3x3 conv + ReLU), then 1x1 convs to
A objectness logits and 4A box deltas per pixel (A anchors per pixel). Outputs
are flattened level by level in (row, column, anchor) order, the anchors'
order (models/mask_rcnn/anchors.py), so output n belongs to anchor n.

Proposals (torchvision's filter_proposals, batched): the pre_nms_top_n
highest-objectness anchors of each level, decoded (weights (1, 1, 1, 1)),
clipped to the image (its size before padding), boxes narrower or lower than
min_size dropped, NMS at nms_threshold within each level, then the
post_nms_top_n best of all levels. torchvision uses 2000 / 2000 in training
and 1000 / 1000 in inference.
"""
import keras
import tensorflow as tf

from models.layers import pointwise_conv2d, same_conv2d
from models.mask_rcnn.box_coder import RPN_WEIGHTS, clip_boxes, decode_boxes
from models.mask_rcnn.nms import grouped_nms


@keras.saving.register_keras_serializable(package="models")
class RPNHead(keras.layers.Layer):
    """Call: [P_first, ..., P_last], P_k [B, H_k, W_k, C] ->
    [objectness logits [B, N] float32, deltas [B, N, 4] float32 (dy, dx, dh, dw)],
    N = sum_k H_k * W_k * num_anchors.
    """

    def __init__(self, num_anchors=3, channels=256, num_convs=1, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = int(num_anchors)
        self.channels = int(channels)
        self.num_convs = int(num_convs)
        init = keras.initializers.RandomNormal(stddev=0.01)  # torchvision's initialisation
        self.convs = [keras.layers.Conv2D(channels, 3, padding="same", activation="relu", kernel_initializer=init,
                                          name=f"conv{i + 1}") for i in range(num_convs)]
        self.objectness = keras.layers.Conv2D(num_anchors, 1, kernel_initializer=init, dtype="float32",
                                              name="objectness")
        self.deltas = keras.layers.Conv2D(4 * num_anchors, 1, kernel_initializer=init, dtype="float32",
                                          name="deltas")

    def build(self, input_shapes):
        shape = (None, None, None, input_shapes[0][-1])
        for conv in self.convs:
            conv.build(shape)
            shape = (None, None, None, self.channels)
        self.objectness.build(shape)
        self.deltas.build(shape)

    def call(self, features):
        objectness, deltas = [], []
        for feature in features:
            x = feature
            for conv in self.convs:
                # conv(x) through same_conv2d: on P2 this convolution's gradient needs two 590 MiB im2col buffers
                # otherwise (models.layers.same_conv2d). Not a SameConv2D layer: a .keras file names the weights
                # of a layer list by class ("convs/conv2d"), and files saved before would no longer load.
                x = conv.activation(same_conv2d(x, tf.cast(conv.kernel, x.dtype), tf.cast(conv.bias, x.dtype)))
            level_objectness, level_deltas = self._predict(x)
            batch = tf.shape(x)[0]
            objectness.append(tf.reshape(level_objectness, [batch, -1]))
            deltas.append(tf.reshape(level_deltas, [batch, -1, 4]))
        return tf.concat(objectness, axis=1), tf.concat(deltas, axis=1)

    def _predict(self, x):
        """[B, H, W, C] -> objectness [B, H, W, A] and deltas [B, H, W, 4 A], float32: the objectness and deltas
        layers' 1 x 1 convolutions as one (pointwise_conv2d) over their kernels side by side.

        One convolution has one gradient for x, where two had two (131 MiB each
        on P2, both alive at the peak of a 2 x 800 x 1344 training step), and
        no temporaries (pointwise_conv2d). The products are summed in float32;
        under a mixed policy the head's autocast scope hands the kernels over in
        float16, as to the convolutions before them.
        """
        layers = (self.objectness, self.deltas)
        kernel = tf.concat([tf.cast(layer.kernel, tf.float32) for layer in layers], axis=-1)
        bias = tf.concat([tf.cast(layer.bias, tf.float32) for layer in layers], axis=0)
        both = pointwise_conv2d(tf.cast(x, tf.float32), kernel) + bias
        return both[..., :self.num_anchors], both[..., self.num_anchors:]

    def compute_output_shape(self, input_shapes):
        batch = input_shapes[0][0]
        return (batch, None), (batch, None, 4)

    def get_config(self):
        return {**super().get_config(), "num_anchors": self.num_anchors, "channels": self.channels,
                "num_convs": self.num_convs}


def _top_per_level(objectness, features, num_anchors, top_n):
    """The top_n highest logits of each level (all of a level with fewer anchors).

    Returns indices [B, M] int32 into the N anchors, and levels [M] int32
    (0-based) of those entries, M = sum_k min(top_n, N_k).
    """
    indices, levels, start = [], [], 0
    for level, feature in enumerate(features):
        shape = tf.shape(feature)
        count = shape[1] * shape[2] * num_anchors
        k = tf.minimum(top_n, count)
        _, top = tf.math.top_k(objectness[:, start:start + count], k=k)
        indices.append(top + start)
        levels.append(tf.fill([k], level))
        start += count
    return tf.concat(indices, axis=1), tf.concat(levels, axis=0)


@keras.saving.register_keras_serializable(package="models")
class Proposals(keras.layers.Layer):
    """RPN outputs -> proposals (see the module docstring).

    Call: [objectness [B, N] float, deltas [B, N, 4] float, anchors [1, N, 4] float,
    image_sizes [B, 2] int (height, width before padding), P_first, ..., P_last
    (only their sizes are read)] ->
    [proposals [B, post_nms_top_n, 4] float32 (y1, x1, y2, x2, image pixels),
     scores [B, post_nms_top_n] float32 (objectness probabilities, decreasing),
     num_proposals [B] int32 (the valid ones come first; the rest are zeros)].
    """

    def __init__(self, num_anchors=3, pre_nms_top_n=1000, post_nms_top_n=1000, nms_threshold=0.7, min_size=1e-3,
                 **kwargs):
        # Box arithmetic in float32 under every policy: Keras's autocast would hand this layer float16
        # deltas and boxes under mixed_float16 (1 px spacing past 1024 px).
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.num_anchors = int(num_anchors)
        self.pre_nms_top_n = int(pre_nms_top_n)
        self.post_nms_top_n = int(post_nms_top_n)
        self.nms_threshold = float(nms_threshold)
        self.min_size = float(min_size)

    def call(self, inputs):
        objectness, deltas, anchors, image_sizes, *features = inputs
        objectness = tf.cast(objectness, tf.float32)
        top, level = _top_per_level(objectness, features, self.num_anchors, self.pre_nms_top_n)  # [B, M], [M]
        logits = tf.gather(objectness, top, batch_dims=1)
        boxes = decode_boxes(tf.gather(deltas, top, batch_dims=1), tf.gather(anchors[0], top), RPN_WEIGHTS)
        boxes = clip_boxes(boxes, image_sizes)
        big_enough = ((boxes[..., 2] - boxes[..., 0] >= self.min_size)
                      & (boxes[..., 3] - boxes[..., 1] >= self.min_size))
        # Each box scores only in its level's column; dropped boxes and other levels score -1 (below 0 <= sigmoid).
        in_level = tf.one_hot(level, len(features), on_value=True, off_value=False, dtype=tf.bool)[None]
        scores = tf.where(in_level & big_enough[..., None], tf.sigmoid(logits)[..., None], -1.0)
        proposals, scores, _, valid = grouped_nms(
            boxes[:, :, None], scores, max_output_size=self.post_nms_top_n, iou_threshold=self.nms_threshold,
            score_threshold=-0.5)
        return proposals, scores, valid

    def compute_output_shape(self, input_shapes):
        batch = input_shapes[0][0]
        return (batch, self.post_nms_top_n, 4), (batch, self.post_nms_top_n), (batch,)

    def get_config(self):
        return {**super().get_config(), "num_anchors": self.num_anchors, "pre_nms_top_n": self.pre_nms_top_n,
                "post_nms_top_n": self.post_nms_top_n, "nms_threshold": self.nms_threshold,
                "min_size": self.min_size}

"""Small serializable layers shared by the models.

Both work on any (dynamic) spatial size and are differentiable.
"""
import keras
import tensorflow as tf


def _averaging_matrix(bins, size):
    """[bins, size] float32: row i averages [floor(i*size/bins), ceil((i+1)*size/bins))."""
    i = tf.range(bins)
    start = (i * size) // bins
    end = ((i + 1) * size + bins - 1) // bins
    position = tf.range(size)
    inside = (position[None, :] >= start[:, None]) & (position[None, :] < end[:, None])
    return tf.cast(inside, tf.float32) / tf.cast(end - start, tf.float32)[:, None]


@keras.saving.register_keras_serializable(package="models")
class AdaptiveAveragePooling2D(keras.layers.Layer):
    """Average pooling to a fixed output grid for any input size.

    Same bins as PyTorch's AdaptiveAvgPool2d: output row i averages input rows
    [floor(i*H/h), ceil((i+1)*H/h)) (likewise for columns), so neighbouring bins
    overlap when h does not divide H, and an input smaller than the grid repeats
    rows. Written as two small averaging matrices applied with einsum because
    tf.image.resize(method="area") has no gradient. Computed in float32.

    Args:
      output_size: int or (h, w).

    Call: x [B, H, W, C] float -> [B, h, w, C] in the layer's compute dtype.
    """

    def __init__(self, output_size, **kwargs):
        super().__init__(**kwargs)
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(int(s) for s in output_size)

    def call(self, x):
        rows = _averaging_matrix(self.output_size[0], tf.shape(x)[1])
        cols = _averaging_matrix(self.output_size[1], tf.shape(x)[2])
        y = tf.einsum("ih,bhwc->biwc", rows, tf.cast(x, tf.float32))
        y = tf.einsum("jw,biwc->bijc", cols, y)
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size}


@keras.saving.register_keras_serializable(package="models")
class ResizeLike(keras.layers.Layer):
    """Bilinear resize of a tensor to the spatial size of a reference tensor.

    Convention (used everywhere in this project): half-pixel centres, i.e.
    PyTorch's align_corners=False / tf.image.resize, no antialiasing.

    Call: [x [B, h, w, C] float, reference [B, H, W, ...]] -> [B, H, W, C] in the
    layer's compute dtype (set dtype="float32" for logits under mixed precision).
    """

    def call(self, inputs):
        x, reference = inputs
        y = tf.image.resize(x, tf.shape(reference)[1:3], method="bilinear")
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shapes):
        x_shape, reference_shape = input_shapes
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])


@keras.saving.register_keras_serializable(package="models")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization whose training step uses TensorFlow's fused kernel.

    Keras 3 normalises with separate moments / subtract / multiply ops; the
    fused kernel (oneDNN on CPU, cuDNN on GPU) does statistics, normalisation
    and the moving-average update in one op, 8% faster for a whole PSPNet-50
    training step (BENCHMARKS.md); in inference it is one op with the moving
    statistics. Same weights, config and results as the Keras layer. Normalisation uses the biased batch
    variance, as Keras does; the moving variance takes the kernel's batch
    variance: biased on oneDNN (as Keras), Bessel-corrected (n / (n - 1)) on TF's
    generic and GPU kernels (as cuDNN and PyTorch), a difference below 0.1% once
    batch x height x width is in the thousands.
    Synchronized (cross-replica) BN in training and non-float32 inputs use the
    Keras path unchanged.
    """

    def call(self, inputs, training=None, mask=None):
        if not (inputs.shape.rank == 4 and self.axis in (-1, 3) and inputs.dtype == tf.float32):
            return super().call(inputs, training=training, mask=mask)
        if not training or not self.trainable:
            # Inference: one op with the moving statistics, which TensorFlow's graph optimizer
            # can also fold into the preceding convolution.
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, self.gamma.value, self.beta.value, mean=self.moving_mean.value,
                variance=self.moving_variance.value, epsilon=self.epsilon, is_training=False)
            return outputs
        if self.synchronized:
            return super().call(inputs, training=training, mask=mask)
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma.value, self.beta.value, mean=self.moving_mean.value,
            variance=self.moving_variance.value, epsilon=self.epsilon, is_training=True,
            exponential_avg_factor=1.0 - self.momentum)
        # With exponential_avg_factor the kernel returns the updated moving statistics.
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)
        return outputs

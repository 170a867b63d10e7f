"""Small serializable layers shared by the models.

They work on any (dynamic) spatial size and are differentiable.
"""
import keras
import tensorflow as tf
from tensorflow.python.ops import control_flow_util  # whether a graph is being compiled by XLA


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
    rows. Written as two small averaging matrices (tf.image.resize(method="area")
    has no gradient), applied as batched matmuls on reshaped views: no transposes,
    5x faster than the same contraction through einsum on CPU. Computed in float32.

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
        batch, height, width, channels = tf.unstack(tf.shape(x))
        channels = x.shape[3] if x.shape[3] is not None else channels  # static: the 1x1 convs after it need it
        out_h, out_w = self.output_size
        rows = _averaging_matrix(out_h, height)
        cols = _averaging_matrix(out_w, width)
        y = tf.matmul(rows[None], tf.reshape(tf.cast(x, tf.float32), [batch, height, -1]))  # [B, h, W * C]
        y = tf.matmul(cols[None], tf.reshape(y, [batch * out_h, width, channels]))  # [B * h, w, C]
        return tf.cast(tf.reshape(y, [batch, out_h, out_w, channels]), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size}


def _bilinear_resize(x, size, align_corners):
    """Bilinear resize, no antialiasing: half-pixel centres, or PyTorch's align_corners=True.

    With align_corners the corner pixels of input and output coincide: output
    index i reads input coordinate i * (in - 1) / (out - 1) (index 0 when out
    is 1, as PyTorch). Both forms have gradients.
    """
    if align_corners:
        return tf.raw_ops.ResizeBilinear(images=x, size=size, align_corners=True, half_pixel_centers=False)
    return tf.image.resize(x, size, method="bilinear")


@keras.saving.register_keras_serializable(package="models")
class ResizeLike(keras.layers.Layer):
    """Bilinear resize of a tensor to the spatial size of a reference tensor.

    Convention (used everywhere in this project): half-pixel centres, i.e.
    PyTorch's align_corners=False / tf.image.resize, no antialiasing.
    align_corners=True reproduces PyTorch's F.interpolate(align_corners=True),
    which semseg's PSPNet uses.

    Call: [x [B, h, w, C] float, reference [B, H, W, ...]] -> [B, H, W, C] in the
    layer's compute dtype (set dtype="float32" for logits under mixed precision).
    """

    def __init__(self, align_corners=False, **kwargs):
        super().__init__(**kwargs)
        self.align_corners = bool(align_corners)

    def call(self, inputs):
        x, reference = inputs
        y = _bilinear_resize(x, tf.shape(reference)[1:3], self.align_corners)
        return tf.cast(y, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "align_corners": self.align_corners}

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
        if training and not self.trainable:
            # Frozen inside a training step (torchvision's FrozenBatchNorm2d): Keras's x * scale + shift, whose
            # input gradient needs only the [C] scale. The fused op's gradient kernel reads x, so every frozen
            # BN that a gradient passes through would keep its input alive until the backward pass (about
            # 0.9 GB in the Mask R-CNN detector's training step at 2 x 800 x 1344).
            return super().call(inputs, training=False, mask=mask)
        if not training:
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


def _resize_matrix(source, target, dtype, align_corners=False):
    """[target, source]: row y holds the weights a bilinear resize gives source rows for row y.

    Built by resizing an identity matrix, so it matches the resize kernel exactly
    (half-pixel centres or align_corners, clamped at the edges, no antialiasing; up or down).
    """
    # The identity from Range + Equal: tf.eye with a dynamic size becomes MatrixDiagV3, which OpenVINO's
    # converter has no rule for; these ops every exporter knows, and the matrix is the same, exactly.
    positions = tf.range(source)
    identity = tf.cast(tf.equal(positions[:, None], positions[None, :]), tf.float32)[None, :, None, :]
    # identity: [1, source, 1, source]
    rows = _bilinear_resize(identity, tf.stack([target, 1]), align_corners)[0, :, 0, :]
    return tf.cast(rows, dtype)


@keras.saving.register_keras_serializable(package="models")
class PyramidConv2D(keras.layers.Layer):
    """'Same' convolution (stride 1, no bias) of concat([x, resize(p_1), ..., resize(p_n)]) without the concat.

    Computes exactly what Concatenate()([x] + [ResizeLike()([p_i, x])]) followed
    by Conv2D(filters, kernel_size, padding="same", use_bias=False) computes,
    with the same kernel [k, k, C_x + sum C_i, filters], but never builds the
    upsampled branches. The pooled branches p_i are tiny (b x b, e.g. PSPNet's
    1, 2, 3, 6 bins) and resizing is linear, so each branch's share of the
    convolution is
        sum over kernel taps (i, j) of  R_i @ (p @ K_ij) @ S_j^T,
    where R_i / S_j are the bilinear row / column resize matrices shifted by the
    tap offset (zero rows where the tap falls in the padding). In PSPNet-50's
    head this replaces half of the 3x3 convolution's multiply-adds (the four
    512-channel branches of its 4096 input channels) with a few small einsums:
    0.87 -> 0.44 s at 90 x 90 features on a 2-core CPU (BENCHMARKS.md).

    Args:
      filters: output channels.
      kernel_size: odd int.
      align_corners: resize the branches as ResizeLike(align_corners=...) does.

    Call: [x [B, h, w, C_x], p_1 [B, b_1, b'_1, C_1], ...] -> [B, h, w, filters].
    """

    def __init__(self, filters, kernel_size=3, kernel_initializer="he_normal", align_corners=False, **kwargs):
        super().__init__(**kwargs)
        if kernel_size % 2 != 1:
            raise ValueError(f"PyramidConv2D needs an odd kernel_size, got {kernel_size}.")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.align_corners = bool(align_corners)

    def build(self, input_shapes):
        self.split_sizes = [int(shape[-1]) for shape in input_shapes]
        self.kernel = self.add_weight(
            name="kernel", shape=(self.kernel_size, self.kernel_size, sum(self.split_sizes), self.filters),
            initializer=self.kernel_initializer)

    def call(self, inputs):
        x, branches = inputs[0], inputs[1:]
        kernels = tf.split(tf.cast(self.kernel, self.compute_dtype), self.split_sizes, axis=2)
        out = tf.nn.conv2d(x, kernels[0], strides=1, padding="SAME")
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        for p, kernel in zip(branches, kernels[1:]):
            # Row i of `rows` reads source rows for output row y + i - half (zero outside the image).
            rows = _shifted_resize_matrices(tf.shape(p)[1], height, self.kernel_size, self.compute_dtype,
                                            self.align_corners)
            cols = _shifted_resize_matrices(tf.shape(p)[2], width, self.kernel_size, self.compute_dtype,
                                            self.align_corners)
            taps = tf.einsum("bacp,ijpo->bijaco", p, kernel)  # each bin's contribution per tap
            along_rows = tf.einsum("iya,bijaco->byjco", rows, taps)
            out += tf.einsum("jxc,byjco->byxo", cols, along_rows)
        return out

    def compute_output_shape(self, input_shapes):
        return (*input_shapes[0][:3], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "align_corners": self.align_corners}


def _shifted_resize_matrices(source, target, kernel_size, dtype, align_corners=False):
    """[kernel_size, target, source]: slice i is the resize matrix with output row y taken from row y + i - k // 2."""
    half = kernel_size // 2
    rows = tf.pad(_resize_matrix(source, target, dtype, align_corners), [[half, half], [0, 0]])
    return tf.stack([rows[i:i + target] for i in range(kernel_size)])


def same_conv2d(x, kernel, bias=None):
    """tf.nn.conv2d(x, kernel, strides=1, padding="SAME") (+ bias) with a gradient that needs no im2col buffer.

    x: [B, H, W, C_in]; kernel: [k_h, k_w, C_in, C_out], k_h and k_w odd; bias: None or [C_out].
    Returns [B, H, W, C_out]: TensorFlow's own convolution and bias add, as
    keras.layers.Conv2D runs them (the bias inside the custom gradient, so that
    grappler still fuses the two in a graph: the same numbers as Conv2D's).

    Why: without oneDNN (TensorFlow's default on CPUs without AVX-512, such
    as this project's 2-core AMD machine), Conv2DBackpropFilter and
    Conv2DBackpropInput unfold one whole image into an im2col buffer
    [H * W, k_h * k_w * C_in]: 590 MiB each for a 3 x 3, 256-channel
    convolution on the detector's P2 (200 x 336), the largest allocation of
    its training step (measured). Here:
    - the input gradient is a 'same' convolution of the upstream gradient
      with the kernel flipped and transposed (exact for stride 1, odd sizes);
    - the kernel gradient is summed over strips of rows (_kernel_gradient):
      at most STRIP_FLOATS floats of x and of dy copied at a time.
    """
    # A tensor, not a variable (Keras hands layers their variables): tf.custom_gradient would want their gradient.
    x, kernel = tf.convert_to_tensor(x), tf.convert_to_tensor(kernel)
    if bias is None:
        return _same_conv2d(x, kernel)
    return _same_conv2d_bias(x, kernel, tf.convert_to_tensor(bias))


def _conv_gradients(x, kernel, dy):
    """(dx, d kernel) of same_conv2d."""
    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        # In a jit_compile=True function XLA compiles TensorFlow's own gradient ops (no im2col buffer there),
        # and it could not compile the strips: their sizes depend on the loop index.
        return (tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=kernel, out_backprop=dy,
                                               strides=[1, 1, 1, 1], padding="SAME"),
                tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=tf.shape(kernel), out_backprop=dy,
                                                strides=[1, 1, 1, 1], padding="SAME"))
    dkernel = _kernel_gradient(x, dy, kernel.shape[0], kernel.shape[1])
    with tf.control_dependencies([dkernel]):  # one strip's copies alive at a time, not theirs and dx's
        dx = tf.nn.conv2d(dy, tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2]), strides=1, padding="SAME")
    return dx, dkernel


@tf.custom_gradient
def _same_conv2d(x, kernel):
    return tf.nn.conv2d(x, kernel, strides=1, padding="SAME"), lambda dy: _conv_gradients(x, kernel, dy)


@tf.custom_gradient
def _same_conv2d_bias(x, kernel, bias):
    y = tf.nn.conv2d(x, kernel, strides=1, padding="SAME") + tf.reshape(bias, [1, 1, 1, -1])  # as Conv2D adds it
    return y, lambda dy: (*_conv_gradients(x, kernel, dy), tf.reduce_sum(dy, axis=[0, 1, 2]))


def pointwise_conv2d(x, kernel):
    """A 1 x 1, stride-1 convolution as one matmul over the pixels: x [B, H, W, C_in], kernel [1, 1, C_in, C_out]
    -> [B, H, W, C_out].

    Why not tf.nn.conv2d: without oneDNN (TensorFlow's default on CPUs without
    AVX-512), Conv2DBackpropInput and Conv2DBackpropFilter of a 1 x 1
    convolution each allocate a temporary of one image's [H * W, C_in]
    (65.6 MiB on the detector's P2, at the peak of its training step); a
    matmul's gradient is two matmuls that allocate only their outputs.
    """
    kernel = tf.reshape(kernel, tf.shape(kernel)[2:])
    outputs = tf.matmul(tf.reshape(x, [-1, tf.shape(x)[-1]]), kernel)
    return tf.reshape(outputs, tf.concat([tf.shape(x)[:-1], tf.shape(kernel)[1:]], axis=0))


STRIP_FLOATS = 1 << 22  # 16 MiB of float32 per strip copy


def _kernel_gradient(x, dy, k_h, k_w):
    """d kernel [k_h, k_w, C_in, C_out] of a stride-1 'same' convolution: x [B, H, W, C_in], dy [B, H, W, C_out].

    d kernel[a, b] = sum over pixels (y, x) of x[y + a - k_h // 2, x + b - k_w // 2] (outer) dy[y, x],
    one strip of rows of one image at a time (a tf.while_loop). In a strip, x
    (with its k_h // 2 rows above and below, zero outside the image) and dy are
    copied into grids of the same width W + k_w - 1 (dy at the top-left, zeros
    elsewhere): there a tap's shift is one offset along the flattened rows, so
    each tap is one matmul of a view of x's rows with dy's rows.
    """
    shape = tf.shape(x)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    filters = tf.shape(dy)[-1]
    half_h, half_w = k_h // 2, k_w // 2
    wide = width + k_w - 1
    rows = tf.clip_by_value(STRIP_FLOATS // (wide * tf.maximum(channels, filters)), 1, height)
    strips = (height + rows - 1) // rows

    def strip_gradient(index):
        image, first = index // strips, (index % strips) * rows
        last = tf.minimum(first + rows, height)
        low, high = tf.maximum(first - half_h, 0), tf.minimum(last + half_h, height)
        # x's rows first - half_h .. last + half_h (zeros outside the image), then one zero row for the last tap.
        xs = tf.pad(x[image, low:high], [[low - (first - half_h), (last + half_h) - high + 1], [half_w, half_w],
                                         [0, 0]])
        dys = tf.pad(dy[image, first:last], [[0, k_h], [0, k_w - 1], [0, 0]])
        xs, dys = tf.reshape(xs, [-1, channels]), tf.reshape(dys, [-1, filters])
        length = (last - first) * wide  # dy's rows that can be nonzero
        return tf.stack([tf.stack([tf.matmul(xs[a * wide + b:a * wide + b + length], dys[:length], transpose_a=True)
                                   for b in range(k_w)]) for a in range(k_h)])

    _, total = tf.while_loop(
        lambda index, _: index < batch * strips,
        lambda index, total: (index + 1, total + strip_gradient(index)),
        (tf.constant(0), tf.zeros([k_h, k_w, channels, filters], x.dtype)))
    return total


@keras.saving.register_keras_serializable(package="models")
class SameConv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D for stride-1 'same' convolutions with odd kernels, through same_conv2d:
    the same weights and outputs, a training step without im2col buffers (same_conv2d says why).

    The detector's FPN output convs and RPN head conv, which run at 1/4 of the
    image's size, are these. Call: [B, H, W, C_in] -> [B, H, W, filters].
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        if (tuple(self.strides) != (1, 1) or self.padding != "same" or tuple(self.dilation_rate) != (1, 1)
                or self.groups != 1 or self.data_format != "channels_last"
                or any(size % 2 == 0 for size in self.kernel_size)):
            raise ValueError(f"SameConv2D is a stride-1, 'same', undilated, ungrouped channels_last convolution with "
                             f"odd kernel sizes; got strides={self.strides}, padding={self.padding!r}, "
                             f"dilation_rate={self.dilation_rate}, groups={self.groups}, "
                             f"data_format={self.data_format!r}, kernel_size={self.kernel_size}")

    def call(self, inputs):
        outputs = same_conv2d(inputs, self.kernel, self.bias if self.use_bias else None)
        return outputs if self.activation is None else self.activation(outputs)


@keras.saving.register_keras_serializable(package="models")
class PaddedConv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D with `pad` zero pixels on every side, added inside the convolution (Caffe's and
    PyTorch's padding; Keras "same" pads only bottom / right on even sizes).

    Same numbers as ZeroPadding2D(pad) followed by a "valid" Conv2D, but in a
    training step the convolution keeps its unpadded input for the backward,
    which the layer before keeps anyway: ZeroPadding2D's output was one more
    copy (118 MiB for the three strided 3x3 convs of the detector's ResNet-50
    at 2 x 800 x 1344). Call: [B, H, W, C] -> [B, H', W', filters] with
    H' = floor((H + 2 pad - dilation (k - 1) - 1) / stride) + 1.
    """

    def __init__(self, filters, kernel_size, pad=0, **kwargs):
        if kwargs.setdefault("padding", "valid") != "valid" or kwargs.get("data_format") == "channels_first":
            raise ValueError(f"PaddedConv2D pads by `pad` (channels_last): got padding={kwargs['padding']!r}, "
                             f"data_format={kwargs.get('data_format')!r}")
        super().__init__(filters, kernel_size, **kwargs)
        self.pad = int(pad)

    def convolution_op(self, inputs, kernel):
        return tf.nn.conv2d(inputs, kernel, strides=list(self.strides), dilations=list(self.dilation_rate),
                            padding=[[0, 0], [self.pad, self.pad], [self.pad, self.pad], [0, 0]])

    def compute_output_shape(self, input_shape):
        padded = [None if size is None else size + 2 * self.pad for size in input_shape[1:3]]
        return super().compute_output_shape((input_shape[0], *padded, input_shape[3]))

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}

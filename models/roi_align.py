"""RoIAlign (He et al. 2017) over an FPN, written with gathers so that it compiles under XLA.

Coordinates: boxes are [y1, x1, y2, x2] in continuous image pixels (pixel (i, j)
covers [i, i+1) x [j, j+1)). On a feature map of stride s, a box covers
[y1/s, y2/s); feature (i, j) sits at (i + 0.5, j + 0.5), so a continuous
position p reads index p - 0.5: Detectron2's `aligned=True` RoIAlign (the
default). `aligned=False` is the original RoIAlign that torchvision's Mask R-CNN
uses: no half-pixel shift (position p reads index p) and boxes narrower than one
feature pixel are widened to one.

Sampling: each of the output_size x output_size bins averages
sampling_ratio x sampling_ratio bilinear samples at the centres of a regular
sub-grid of the bin. A sample more than one pixel outside the map reads 0; one
within a pixel of the border reads the border value (Detectron2's convention).

Levels: a box of size w x h (image pixels) reads FPN level
    k = clip(floor(canonical_level + log2(sqrt(w h) / canonical_size)), min_level, max_level)
with canonical_size 224 (the ImageNet pre-training size) at canonical_level 4,
i.e. a 224 x 224 box reads P4, 112 x 112 P3, 448 x 448 P5 (FPN paper, eq. 1).
Boxes exactly on a level boundary need an epsilon to land consistently: by
default it is added to the size (sqrt(w h) + 1e-6); `level_epsilon=1e-6` instead
adds it to the level before the floor, as torchvision's LevelMapper does.

tf.image.crop_and_resize has no XLA kernel; here each sample's four
neighbours are gathered from one flat table of all levels, which compiles
(_weighted_gathers says in which order, forward and backward, to keep memory low).
"""
import keras
import tensorflow as tf

CANONICAL_SIZE = 224.0
CANONICAL_LEVEL = 4


def roi_levels(boxes, *, min_level=2, max_level=5, canonical_size=CANONICAL_SIZE, canonical_level=CANONICAL_LEVEL,
               level_epsilon=None):
    """FPN level of each box. boxes: [..., 4] float (y1, x1, y2, x2, image pixels) -> [...] int32.

    level_epsilon: None (Detectron's rounding) or torchvision's 1e-6 (see the module docstring).
    """
    boxes = tf.cast(boxes, tf.float32)
    height = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    width = tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    if level_epsilon is None:
        # The epsilon keeps log2 finite for empty (padding) boxes: they go to min_level.
        size, level_epsilon = tf.sqrt(height * width) + 1e-6, 0.0
    else:
        # An empty box gives log2(0) = -inf: clipped to min_level below, as in torchvision.
        size = tf.sqrt(height * width)
    level = tf.floor(canonical_level + tf.math.log(size / canonical_size) / tf.math.log(2.0) + level_epsilon)
    return tf.cast(tf.clip_by_value(level, min_level, max_level), tf.int32)


def _axis_samples(start, end, length, output_size, sampling_ratio, aligned=True):
    """Neighbour indices and bilinear weights of the samples along one axis.

    start, end: [R] float, the box edges in this map's continuous pixels.
    length: [R] int32, the map's size along the axis.
    aligned: see the module docstring (False: no half-pixel shift, extent >= 1).
    Returns index [R, P, 2] int32 and weight [R, P, 2] float32 with
    P = output_size * sampling_ratio (bin-major: P index = bin * ratio + sample).
    """
    count = output_size * sampling_ratio
    if aligned:
        step, shift = (end - start) / count, 0.5
    else:
        step, shift = tf.maximum(end - start, 1.0) / count, 0.0
    position = start[:, None] + (tf.range(count, dtype=tf.float32)[None, :] + 0.5) * step[:, None] - shift
    last = tf.cast(length - 1, tf.float32)[:, None]
    inside = tf.cast((position >= -1.0) & (position <= last + 1.0), tf.float32)
    position = tf.clip_by_value(position, 0.0, last)
    low = tf.floor(position)
    high = tf.minimum(low + 1.0, last)
    frac = position - low
    index = tf.cast(tf.stack([low, high], axis=-1), tf.int32)
    weight = tf.stack([1.0 - frac, frac], axis=-1) * inside[..., None]
    return index, weight


def crop_and_sample(maps, base, height, width, boxes, output_size, sampling_ratio, aligned=True):
    """RoIAlign of R boxes, each on its own map stored in a flat table.

    maps: list of [B, ..., C] float32 tensors whose rows, taken image by image
        (image b's rows of every map in turn, each map's rows row-major), form
        the table [T, C] (a single [T, C] tensor is one map of T "images").
    base: [R] int32, row of the table where each box's map starts.
    height, width: [R] int32, that map's size.
    boxes: [R, 4] float32 (y1, x1, y2, x2) in that map's continuous pixels.
    Returns [R, output_size, output_size, C] float32. The gradient flows to
    `maps` only, not to the boxes (as torchvision's roi_align).

    Each bin's value is a weighted sum over K = 4 s^2 (sample within the bin,
    neighbour) pairs: _weighted_gathers says in which order, to keep memory low.
    """
    n, s = output_size, sampling_ratio
    rows, row_weight = _axis_samples(boxes[:, 0], boxes[:, 2], height, n, s, aligned)
    cols, col_weight = _axis_samples(boxes[:, 1], boxes[:, 3], width, n, s, aligned)
    # [R, n, s, 2]: bin, sample within the bin, low / high neighbour.
    rows, row_weight, cols, col_weight = (tf.reshape(t, [-1, n, s, 2]) for t in (rows, row_weight, cols, col_weight))
    row_start = base[:, None, None, None] + rows * width[:, None, None, None]  # table row of each (row, column 0)
    flat, weight = [], []
    # Sample by sample, the 4 neighbours of each in turn, as torchvision's and Detectron2's kernels add them.
    for row_sample in range(s):
        for col_sample in range(s):
            for row_neighbour in range(2):
                for col_neighbour in range(2):
                    # [R, n, n]: this neighbour of this sample in every bin.
                    flat.append(row_start[:, :, None, row_sample, row_neighbour]
                                + cols[:, None, :, col_sample, col_neighbour])
                    weight.append(row_weight[:, :, None, row_sample, row_neighbour]
                                  * col_weight[:, None, :, col_sample, col_neighbour])
    # A trailing axis of 1 on both: gather_nd / scatter indices, and weights that broadcast over channels.
    # (Slicing weight[k, ..., None] inside _weighted_gathers instead made grappler's arithmetic optimizer
    # emit a wrong-shaped multiply in the training step's graph: 'Incompatible shapes' at run time.)
    return _weighted_gathers(tf.stack(flat)[..., None], tf.stop_gradient(tf.stack(weight))[..., None],
                             *maps) / float(s * s)


def _table(maps):
    """The [T, C] table of crop_and_sample's maps: each image's rows of every map in turn."""
    channels = tf.shape(maps[0])[-1]
    rows = [tf.reshape(m, [tf.shape(m)[0], -1, channels]) for m in maps]
    return tf.reshape(rows[0] if len(rows) == 1 else tf.concat(rows, axis=1), [-1, channels])


@tf.custom_gradient
def _weighted_gathers(flat, weight, *maps):
    """sum_k weight[k] * table[flat[k]]: flat [K, R, n, n, 1] int32 (rows of the table of `maps`, see
    crop_and_sample), weight [K, R, n, n, 1] float32 -> [R, n, n, C] float32; the gradient flows to
    `maps` only.

    Forward: one gather per k, each [R, n, n, C], added to the sum before the
    next one starts (the control dependencies keep TensorFlow's executor from
    running the K independent gathers at once). Gathering all K at once
    ([R, n*s, 2, n*s, 2, C], then reduced) held K times the output, 0.8 GB for
    1000 RoIs at 7x7 with 256 channels, and was 3-4x slower.
    The table (the maps concatenated, 174 MiB for the detector's P2-P5 at
    2 x 800 x 1344) is built here so that it lives only in this forward: as an
    input of the custom gradient it stayed alive until the backward (measured
    in the detector's training step), and the backward then also held its
    gradient and that gradient's slices per map, three tables at once.
    Backward: _maps_gradient. tf.gather's own gradient is K IndexedSlices of
    [R * n * n, C] that TensorFlow concatenates before summing them into the
    table: 2 K times the output alive at once, +1.7 GB for the detector
    training step's 1024 RoIs at 7x7 (measured).
    """
    table = _table(maps)
    total = weight[0] * tf.gather_nd(table, flat[0])
    for k in range(1, flat.shape[0]):
        with tf.control_dependencies([total]):
            total += weight[k] * tf.gather_nd(table, flat[k])
    shapes = [tf.shape(m) for m in maps]  # the backward keeps these, not the maps

    def gradient(upstream):
        return (None, None, *_maps_gradient(shapes, flat, weight, upstream))

    return total, gradient


@tf.function(jit_compile=True)
def _maps_gradient(shapes, flat, weight, upstream):
    """The gradients of _weighted_gathers' maps (shapes: each map's shape, [rank] int32; flat, weight as
    _weighted_gathers; upstream [R, n, n, C]): each k's weight[k] * upstream added into each map's zero
    gradient at the rows of flat[k] that fall in that map.

    A table row of flat[k] is image * T + offset_m + r for row r of map m
    (crop_and_sample's layout); scattered into map m as image * rows_m + r,
    or out of range when it is another map's row: XLA skips such updates.
    Compiled: XLA adds the K scatters into the maps' buffers in place, one
    product weight[k] * upstream [R, n, n, C] alive at a time. Scattering into
    one [T, C] table and cutting it into the maps held the table and the maps
    at once (174 MiB more in the detector's training step); TensorFlow's own
    TensorScatterAdd copies its [T, C] input at each of the K steps (it does
    not forward the buffer here) and was 6x slower (1.29 s against 0.22 s for
    16 scatters of 50k rows into a 178,500 x 256 table, this 2-core machine).
    """
    channels = shapes[0][-1]
    rows = [tf.reduce_prod(shape[1:-1]) for shape in shapes]  # per image
    per_image = tf.add_n(rows)
    images = shapes[0][0]
    image, row = flat // per_image, flat % per_image
    indices, offset = [], 0
    for size in rows:
        inside = (row >= offset) & (row < offset + size)
        indices.append(tf.where(inside, image * size + row - offset, images * size))  # out of range: skipped
        offset += size
    # A loop, not K unrolled scatters, whose K products XLA would compute before the first scatter.
    _, grads = tf.while_loop(
        lambda k, _: k < tf.shape(flat)[0],
        lambda k, grads: (k + 1, [tf.tensor_scatter_nd_add(grad, index[k], weight[k] * upstream)
                                  for grad, index in zip(grads, indices)]),
        (tf.constant(0), [tf.zeros([images * size, channels], upstream.dtype) for size in rows]))
    return [tf.reshape(grad, shape) for grad, shape in zip(grads, shapes)]


def multilevel_roi_align(features, boxes, *, output_size, sampling_ratio=2, min_level=2, max_level=5,
                         canonical_size=CANONICAL_SIZE, canonical_level=CANONICAL_LEVEL, aligned=True,
                         level_epsilon=None, image_index=None):
    """RoIAlign over FPN levels (aligned, level_epsilon: see the module docstring).

    features: list of [B, H_k, W_k, C] maps for levels min_level..max_level in
        order (stride 2**k each).
    boxes: [B, R, 4] float (y1, x1, y2, x2) in image pixels, R per image; or,
        with image_index, one flat list [N, 4] of boxes of any images.
    image_index: None, or [N] int32: the image (0..B-1) each flat box is on
        (the detector's training step aligns a variable number of positive RoIs
        of the whole batch this way).
    Returns [B, R, output_size, output_size, C] float32, or [N, output_size,
    output_size, C] with image_index.
    """
    if len(features) != max_level - min_level + 1:
        raise ValueError(f"expected {max_level - min_level + 1} feature maps (levels {min_level}..{max_level}), "
                         f"got {len(features)}")
    boxes = tf.cast(boxes, tf.float32)
    if image_index is None:  # [B, R, 4]: the flat form on B * R boxes, then back to [B, R, ...]
        batch, num_rois = tf.shape(boxes)[0], tf.shape(boxes)[1]
        crops = multilevel_roi_align(
            features, tf.reshape(boxes, [-1, 4]), output_size=output_size, sampling_ratio=sampling_ratio,
            min_level=min_level, max_level=max_level, canonical_size=canonical_size,
            canonical_level=canonical_level, aligned=aligned, level_epsilon=level_epsilon,
            image_index=tf.repeat(tf.range(batch), num_rois))
        return tf.reshape(crops, tf.concat([[batch, num_rois], tf.shape(crops)[1:]], axis=0))
    features = [tf.cast(f, tf.float32) for f in features]
    heights = tf.stack([tf.shape(f)[1] for f in features])
    widths = tf.stack([tf.shape(f)[2] for f in features])
    # crop_and_sample's table [B * T, C]: image b's levels occupy rows b*T + offset_k .. b*T + offset_k + H_k*W_k.
    per_image = tf.reduce_sum(heights * widths)
    offsets = tf.cumsum(heights * widths, exclusive=True)

    level = roi_levels(boxes, min_level=min_level, max_level=max_level, canonical_size=canonical_size,
                       canonical_level=canonical_level, level_epsilon=level_epsilon) - min_level
    base = tf.cast(image_index, tf.int32) * per_image + tf.gather(offsets, level)
    scale = tf.pow(2.0, -tf.cast(level + min_level, tf.float32))
    return crop_and_sample(features, base, tf.gather(heights, level), tf.gather(widths, level),
                           boxes * scale[:, None], output_size, sampling_ratio, aligned)


@keras.saving.register_keras_serializable(package="models")
class MultiLevelRoIAlign(keras.layers.Layer):
    """Keras layer around `multilevel_roi_align` (see the module docstring for conventions).

    Call: [boxes [B, R, 4] float (image pixels), P_min, ..., P_max] with
    P_k [B, H_k, W_k, C] -> [B, R, output_size, output_size, C] in the compute dtype;
    or, with image_index=[N] int32, boxes [N, 4] of any images -> [N, output_size,
    output_size, C] (multilevel_roi_align's flat form; not for functional graphs).
    torchvision's MultiScaleRoIAlign is aligned=False, level_epsilon=1e-6.
    """

    def __init__(self, output_size=7, sampling_ratio=2, min_level=2, max_level=5,
                 canonical_size=CANONICAL_SIZE, canonical_level=CANONICAL_LEVEL, aligned=True, level_epsilon=None,
                 **kwargs):
        # No autocast: under mixed_float16 Keras cast the boxes of a call with image_index to float16, whose
        # spacing is 1 px above 1024 (1333.3 -> 1333). The features are read in float32 anyway (one table).
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.output_size = int(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.min_level = int(min_level)
        self.max_level = int(max_level)
        self.canonical_size = float(canonical_size)
        self.canonical_level = int(canonical_level)
        self.aligned = bool(aligned)
        self.level_epsilon = None if level_epsilon is None else float(level_epsilon)

    def call(self, inputs, image_index=None):
        boxes, *features = inputs
        crops = multilevel_roi_align(
            features, boxes, output_size=self.output_size, sampling_ratio=self.sampling_ratio,
            min_level=self.min_level, max_level=self.max_level, canonical_size=self.canonical_size,
            canonical_level=self.canonical_level, aligned=self.aligned, level_epsilon=self.level_epsilon,
            image_index=image_index)
        return tf.cast(crops, self.compute_dtype)

    def compute_output_shape(self, input_shapes):
        boxes_shape, first = input_shapes[0], input_shapes[1]
        return (boxes_shape[0], boxes_shape[1], self.output_size, self.output_size, first[-1])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size, "sampling_ratio": self.sampling_ratio,
                "min_level": self.min_level, "max_level": self.max_level,
                "canonical_size": self.canonical_size, "canonical_level": self.canonical_level,
                "aligned": self.aligned, "level_epsilon": self.level_epsilon}

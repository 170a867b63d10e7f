"""Paired image/label geometry: the same resize, flip, pad and crop on both.

Images are resampled bilinearly and labels by nearest neighbour, so a label
never takes a value that no source pixel had. Labels may be [H, W] (a class map)
or [H, W, K] (K stacked masks); whatever geometry an image gets, its label gets.

Randomness is stateless: every random function takes `seed`, a [2] int32/int64
tensor (see `tf.random.stateless_uniform`), so a pipeline that draws seeds from
`tf.data.Dataset.random(seed)` is reproducible and each tf.data worker can run
it in parallel without shared random state.
"""
import tensorflow as tf


def resize_pair(image, label, size):
    """Resizes both to `size` (bilinear image, nearest label; half-pixel centres).

    image: [H, W, C] any real dtype -> [h, w, C] float32.
    label: [H, W] or [H, W, K] integer -> [h, w] or [h, w, K], same dtype.
    size: (h, w) ints or a [2] int32 tensor.
    """
    label = tf.convert_to_tensor(label)
    image = tf.image.resize(image, size, method="bilinear")
    if label.shape.rank == 2:
        label = tf.image.resize(label[..., None], size, method="nearest")[..., 0]
    else:
        label = tf.image.resize(label, size, method="nearest")
    return image, label


def flip_pair(image, label):
    """Mirrors both left-right. image: [H, W, C]; label: [H, W] or [H, W, K]."""
    return tf.reverse(image, axis=[1]), tf.reverse(label, axis=[1])


def pad_pair(image, label, min_size, label_fill):
    """Pads bottom and right up to at least `min_size` = (h, w); larger sides stay.

    image: [H, W, C], padded with 0 (pass a mean-subtracted image so the padding
    reads as the mean colour); label: [H, W] or [H, W, K], padded with
    `label_fill` (the ignore label, so the loss never sees padding).
    """
    image, label = tf.convert_to_tensor(image), tf.convert_to_tensor(label)
    shape = tf.shape(image)
    pad_h = tf.maximum(min_size[0] - shape[0], 0)
    pad_w = tf.maximum(min_size[1] - shape[1], 0)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
    label_pad = [[0, pad_h], [0, pad_w]] + [[0, 0]] * (label.shape.rank - 2)
    label = tf.pad(label, label_pad, constant_values=tf.cast(label_fill, label.dtype))
    return image, label


def crop_pair(image, label, offset, size):
    """Cuts the window at `offset` = (y, x) of `size` = (h, w) from both.

    The window must lie inside the image (pad first). Static `size` gives
    static output shapes: image [h, w, C], label [h, w] or [h, w, K].
    """
    label = tf.convert_to_tensor(label)
    y, x = offset[0], offset[1]
    h, w = size
    # tf.slice (not [y:y + h]) keeps the static size when the offset is a tensor.
    image = tf.slice(image, [y, x, 0], [h, w, -1])
    rest = label.shape.rank - 2
    label = tf.slice(label, [y, x] + [0] * rest, [h, w] + [-1] * rest)
    return image, label


# The PSPNet reference rotates half of the images (semseg's RandRotate, p=0.5).
_ROTATE_PROB = 0.5


def random_scale_flip_crop(image, label, seed, *, crop_size, scale_range, label_fill, rotation_degrees=0.0,
                           image_fill=0.0):
    """The PSPNet training geometry: random resize, rotation, mirror, pad and crop, resampled once.

    As the reference (semseg) applies them in turn: one factor s ~ U[scale_range]
    scales both sides to round(side * s) (aspect ratio kept, `cv2.resize(fx=s,
    fy=s)`); with probability 1/2 a rotation by U[-rotation_degrees,
    rotation_degrees] about the centre keeps that size (what turns out of it is
    filled); a coin flip mirrors; sides shorter than the crop are padded at the
    bottom and right; a window of `crop_size` is cut at a uniformly random
    position. Filled pixels are `image_fill` in the image and `label_fill` in
    the label.

    All the steps are one affine map from crop pixels to source pixels, and
    only the crop's pixels are computed, by gathering their source pixels: the
    cost depends on the crop, not on the image or the scale, and a uint8 image
    is cast to float only where it is read. Bilinear with clamped edges as
    `tf.image.resize` (half-pixel centres) for the image, nearest for the
    label: with rotation_degrees=0 the result is resize -> flip -> pad -> crop
    (`resize_pair`, `flip_pair`, `pad_pair`, `crop_pair`) up to float rounding.
    Every op compiles with XLA, which fuses them into one pass over the crop
    (see cityscapes.train_pipeline); stateless random ops draw other numbers
    under XLA than without, equally reproducible.

    image: [H, W, C] any real dtype (uint8 is cheapest) -> [h, w, C] float32,
    same units. label: [H, W] or [H, W, K] integer -> [h, w] or [h, w, K], same
    dtype. seed: [2] int tensor. crop_size: (h, w) Python ints. scale_range:
    (lo, hi). rotation_degrees: Python float, 0 = no rotation. image_fill:
    scalar or [C] (0 for a mean-subtracted image; the mean colour for a raw one).
    """
    label = tf.convert_to_tensor(label)
    crop_h, crop_w = crop_size
    # The first four seeds are those of the version without rotation, so a seed
    # draws the same scale, flip and crop with or without rotation_degrees.
    scale_seed, flip_seed, y_seed, x_seed, rotate_seed, angle_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 6)
    )
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = tf.random.stateless_uniform([], scale_seed, minval=scale_range[0], maxval=scale_range[1])
    scaled_h = tf.maximum(tf.round(height * scale), 1.0)
    scaled_w = tf.maximum(tf.round(width * scale), 1.0)
    flip = tf.cast(tf.random.stateless_uniform([], flip_seed) < 0.5, tf.float32)
    # maxval is exclusive: every offset from 0 to (side - crop) can be drawn.
    y0 = tf.random.stateless_uniform([], y_seed, minval=0, dtype=tf.int32,
                                     maxval=tf.maximum(tf.cast(scaled_h, tf.int32) - crop_h, 0) + 1)
    x0 = tf.random.stateless_uniform([], x_seed, minval=0, dtype=tf.int32,
                                     maxval=tf.maximum(tf.cast(scaled_w, tf.int32) - crop_w, 0) + 1)
    angle = tf.constant(0.0)
    if rotation_degrees:
        rotate = tf.random.stateless_uniform([], rotate_seed) < _ROTATE_PROB
        degrees = tf.random.stateless_uniform([], angle_seed, minval=-rotation_degrees, maxval=rotation_degrees)
        angle = tf.where(rotate, degrees * (3.141592653589793 / 180.0), 0.0)

    # Crop pixel index -> source pixel index, in homogeneous (x, y, 1). Pixel
    # i covers [i, i + 1), so positions are index + 0.5, as in tf.image.resize.
    y0f, x0f = tf.cast(y0, tf.float32), tf.cast(x0, tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = scaled_w / 2, scaled_h / 2

    def affine(a, b, c, d, e, f):
        return tf.stack([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]])

    matrix = (
        affine(width / scaled_w, 0.0, -0.5, 0.0, height / scaled_h, -0.5)  # unscale, to index
        @ affine(cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)  # unrotate about centre
        @ affine(1 - 2 * flip, 0.0, flip * scaled_w, 0.0, 1.0, 0.0)  # unflip
        @ affine(1.0, 0.0, x0f + 0.5, 0.0, 1.0, y0f + 0.5)  # crop index -> position in the padded image
    )
    rows = tf.range(crop_h, dtype=tf.float32)[:, None]
    cols = tf.range(crop_w, dtype=tf.float32)[None, :]
    source_x = matrix[0, 0] * cols + matrix[0, 1] * rows + matrix[0, 2]  # [h, w] source column index
    source_y = matrix[1, 0] * cols + matrix[1, 1] * rows + matrix[1, 2]

    # Filled: the padding (outside the scaled image, in crop coordinates) and,
    # after a rotation, what turned in from outside the source image.
    inside = (rows + y0f < scaled_h) & (cols + x0f < scaled_w)
    if rotation_degrees:
        margin = 1e-3  # float rounding must not fill the last row or column of an unrotated crop
        inside &= (source_x > -0.5 - margin) & (source_x < width - 0.5 + margin)
        inside &= (source_y > -0.5 - margin) & (source_y < height - 0.5 + margin)

    def gather(array, ys, xs):
        """array[ys, xs] for int32 [h, w] indices, clamped to the image (as resize clamps its edges)."""
        ys = tf.clip_by_value(ys, 0, shape[0] - 1)
        xs = tf.clip_by_value(xs, 0, shape[1] - 1)
        flat = tf.reshape(array, [shape[0] * shape[1], -1])
        return tf.gather(flat, ys * shape[1] + xs)  # [h, w, channels]

    left, top = tf.floor(source_x), tf.floor(source_y)
    fx, fy = (source_x - left)[..., None], (source_y - top)[..., None]
    left, top = tf.cast(left, tf.int32), tf.cast(top, tf.int32)

    def pixels(ys, xs):
        return tf.cast(gather(image, ys, xs), tf.float32)

    upper = pixels(top, left) * (1 - fx) + pixels(top, left + 1) * fx
    lower = pixels(top + 1, left) * (1 - fx) + pixels(top + 1, left + 1) * fx
    image = tf.where(inside[..., None], upper * (1 - fy) + lower * fy, tf.cast(image_fill, tf.float32))

    # Exact half-pixel ties (scale 1.5, say) go to the higher index, as in
    # tf.image.resize's floor((i + 0.5) * in / out): the float32 composite lands
    # within ~1e-4 pixel of them on either side.
    nearest = gather(label, tf.cast(tf.floor(source_y + 0.501), tf.int32),
                     tf.cast(tf.floor(source_x + 0.501), tf.int32))
    if label.shape.rank == 2:
        nearest = nearest[..., 0]
    else:
        inside = inside[..., None]
    label = tf.where(inside, nearest, tf.cast(label_fill, label.dtype))
    image.set_shape([crop_h, crop_w, image.shape[-1]])
    label.set_shape([crop_h, crop_w] + label.shape[2:].as_list())
    return image, label


# What the reference's cv2.GaussianBlur(image, (5, 5), 0) convolves with: for
# sigma 0 and sizes up to 7 OpenCV takes a fixed binomial table (close to a
# Gaussian with sigma 1) instead of its sigma formula.
_BLUR_TAPS = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def random_gaussian_blur(image, seed, *, prob):
    """Blurs the image with probability `prob` (semseg's RandomGaussianBlur); labels are never blurred.

    A separable 5x5 Gaussian (_BLUR_TAPS) per channel; edges are mirrored
    without repeating the edge pixel, OpenCV's default border (tf.pad REFLECT).
    Written as sums of shifted slices, which XLA fuses into two passes.

    image: [H, W, C] float32 with H, W >= 3 -> same. seed: [2] int tensor.
    prob: Python float in [0, 1]; 0 returns the image untouched.
    """
    if not prob:
        return image
    half = len(_BLUR_TAPS) // 2
    height, width = tf.shape(image)[0], tf.shape(image)[1]

    def blur(image):
        padded = tf.pad(image, [[half, half], [half, half], [0, 0]], mode="REFLECT")
        columns = sum(tap * padded[k:k + height] for k, tap in enumerate(_BLUR_TAPS))
        return sum(tap * columns[:, k:k + width] for k, tap in enumerate(_BLUR_TAPS))

    blurred = tf.cond(tf.random.stateless_uniform([], seed) < prob, lambda: blur(image), lambda: image)
    blurred.set_shape(image.shape)
    return blurred

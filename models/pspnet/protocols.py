"""The published PSPNets' own test protocols, step for step, for one image.

    scores, labels = semseg_predict(model, rgb)                      # hszhao/semseg tool/test.py
    scores, labels = mmseg_predict(model, rgb, **MMSEG_CITYSCAPES["mmseg_769x769"])   # mmsegmentation 0.x

model: a PSPNet (a dict output uses its "main" entry; load_inference_model's
model) or a callable mapping [N, h, w, 3] normalised float32 to logits
[N, h, w, C]; rgb: uint8 [H, W, 3]. Both return (scores [H, W, C] float32,
labels [H, W] int32) as NumPy arrays at the image's size.

How they differ from inference.predict_logits (the project's own protocol,
which runs the image at its own size, windows at multiples of the stride with
zero padding at the bottom/right, bilinear resizes in TensorFlow's convention):

semseg_predict (tool/test.py's test / scale_process / net_process):
  - the image is first resized so that its LONG side is round(scale * base_size)
    (Python's round: half to even), the other side round(long * side / long_side);
    bilinear with half-pixel centres and no antialias (cv2.INTER_LINEAR on the
    float32 image);
  - an image smaller than the crop is padded AROUND THE CENTRE (top/left
    int(pad / 2)) with the mean colour, which is zero once normalised;
  - windows every ceil(crop * 2/3) pixels, grid ceil((size - crop) / stride) + 1,
    the last ones moved back to end at the image's edge (not padded past it);
  - every window runs with its mirror image: the softmax of each, averaged;
  - windows are averaged where they overlap, the padding cropped off, the result
    resized bilinearly to the original size; scales averaged, then argmax.
mmseg_predict (EncoderDecoder.inference / slide_inference / whole_inference,
MultiScaleFlipAug + Resize(keep_ratio=True) + RandomFlip of the test pipeline):
  - each ratio r gives a target scale (int(long * r), int(short * r)); the image
    is rescaled by f = min(long / max(H, W), short / min(H, W)) to
    int(H * f + 0.5) x int(W * f + 0.5) (mmcv.imrescale), uint8 to uint8;
  - "whole": the model runs on the whole resized image; "slide": windows at
    multiples of the stride, max(size - crop + stride - 1, 0) // stride + 1 of
    them, moved back to end at the edge, a window never larger than the image
    (no padding), LOGITS averaged where they overlap;
  - the logits are resized to the original size with the model's align_corners
    (read from its "logits" layer), THEN softmax; a flipped view's probabilities
    are flipped back; probabilities averaged over ratios and flips, then argmax.
  Its published Cityscapes settings are in MMSEG_CITYSCAPES.

Image resizing is OpenCV's cv2.resize(INTER_LINEAR) written out (opencv_resize): the float
arithmetic for semseg's float32 images, and for mmsegmentation's uint8 images OpenCV's 11-bit
fixed-point weights and its SIMD rounding, checked bit for bit against opencv-python 4.10 and 5.1.
"""
import keras
import numpy as np
import tensorflow as tf

from data.normalization import normalize

# mmsegmentation 0.x's Cityscapes test settings per converted layout (configs/_base_/datasets/cityscapes.py:
# img_scale (2048, 1024), test_cfg mode whole; cityscapes_769x769.py: img_scale (2049, 1025) and the
# pspnet_r50-d8_769x769 configs' test_cfg slide 769 / 513). The TTA configs add ratios 0.5 ... 1.75 and flip.
MMSEG_CITYSCAPES = {
    "mmseg": dict(mode="whole", test_scale=(2048, 1024)),
    "mmseg_769x769": dict(mode="slide", test_scale=(2049, 1025), crop=(769, 769), stride=(513, 513)),
}
MMSEG_TTA_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def semseg_predict(model, image, *, crop=713, base_size=2048, scales=(1.0,), window_batch=4):
    """hszhao/semseg's tool/test.py on one image (module docstring).

    image: uint8 [H, W, 3] RGB. crop: the square window (test_h = test_w); semseg's
    PSPNet needs (crop - 1) % 8 == 0. window_batch: windows per model call (each
    runs with its mirror image, so 2 * window_batch images a call).
    Returns (probabilities [H, W, C] float32, labels [H, W] int32) NumPy arrays.
    """
    image = _check_image(image)
    height, width = image.shape[:2]
    rgb = tf.convert_to_tensor(image[None], tf.float32)
    total = 0.0
    for scale in scales:
        new_h, new_w = semseg_scaled_size(height, width, scale, base_size)
        x = normalize(opencv_resize(rgb, (new_h, new_w)))  # cv2.resize of the float32 image, then (x - mean) / std
        pad_h, pad_w = max(crop - new_h, 0), max(crop - new_w, 0)
        top, left = int(pad_h / 2), int(pad_w / 2)
        # Mean-colour padding, normalised: exactly zero.
        x = tf.pad(x, [[0, 0], [top, pad_h - top], [left, pad_w - left], [0, 0]])
        stride = int(np.ceil(crop * (2 / 3)))
        ys = _semseg_starts(new_h + pad_h, crop, stride)
        xs = _semseg_starts(new_w + pad_w, crop, stride)
        p = _overlap_average(model, x[0], ys, xs, (crop, crop), window_batch, _semseg_windows)
        p = p[top:top + new_h, left:left + new_w]
        total += opencv_resize(p[None], (height, width))[0]
    probabilities = total / len(scales)
    return probabilities.numpy(), tf.argmax(probabilities, axis=-1, output_type=tf.int32).numpy()


def semseg_scaled_size(height, width, scale, base_size):
    """(new_h, new_w): the long side round(scale * base_size), as tool/test.py (Python 3 round)."""
    long_size = round(scale * base_size)
    if height > width:
        return long_size, round(long_size / float(height) * width)
    return round(long_size / float(width) * height), long_size


def _semseg_starts(size, crop, stride):
    """Window starts along one axis of a padded size >= crop: scale_process's grid, clamped at the end."""
    grid = int(np.ceil(float(size - crop) / stride) + 1)
    return [min(i * stride + crop, size) - crop for i in range(grid)]


def mmseg_predict(model, image, *, mode="whole", test_scale=(2048, 1024), crop=(769, 769), stride=(513, 513),
                  ratios=(1.0,), flip=False, align_corners=None, window_batch=4):
    """mmsegmentation 0.x's test (simple_test / aug_test) of an EncoderDecoder on one image (module docstring).

    image: uint8 [H, W, 3] RGB. mode: "whole" or "slide". test_scale: the
    MultiScaleFlipAug img_scale (long, short); ratios: its img_ratios (the TTA
    configs' MMSEG_TTA_RATIOS); flip: its flip. crop, stride: (h, w) of test_cfg
    for "slide". align_corners: the decode head's; None reads it from the model's
    "logits" layer (the layout's: True for "mmseg_769x769").
    Returns (probabilities [H, W, C] float32: softmax averaged over the
    augmentations, labels [H, W] int32) NumPy arrays.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f'mode must be "whole" or "slide", got {mode!r}.')
    image = _check_image(image)
    if align_corners is None:
        align_corners = _model_align_corners(model)
    height, width = image.shape[:2]
    rgb = tf.convert_to_tensor(image[None])
    total, count = 0.0, 0
    for ratio in ratios:
        scale = (int(test_scale[0] * ratio), int(test_scale[1] * ratio))
        new_h, new_w = mmseg_rescaled_size(height, width, scale)
        x = normalize(opencv_resize(rgb, (new_h, new_w), uint8=True))  # mmcv.imrescale: uint8 in and out
        for flipped in ((False, True) if flip else (False,)):
            view = tf.reverse(x, axis=[2]) if flipped else x
            if mode == "whole":
                logits = _logits(model, view)[0]
            else:
                window = (min(crop[0], new_h), min(crop[1], new_w))
                ys = _mmseg_starts(new_h, crop[0], stride[0])
                xs = _mmseg_starts(new_w, crop[1], stride[1])
                logits = _overlap_average(model, view[0], ys, xs, window, window_batch, _logits)
            logits = _resize(logits[None], (height, width), align_corners)[0]
            p = tf.nn.softmax(logits, axis=-1)
            total += tf.reverse(p, axis=[1]) if flipped else p
            count += 1
    probabilities = total / count
    return probabilities.numpy(), tf.argmax(probabilities, axis=-1, output_type=tf.int32).numpy()


def mmseg_rescaled_size(height, width, scale):
    """(new_h, new_w) of mmcv.imrescale(img, scale=(long, short)): the largest size within the scale."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


def _mmseg_starts(size, crop, stride):
    """Window starts along one axis: slide_inference's grid, clamped at the end and at 0."""
    grid = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride + crop, size) - crop, 0) for i in range(grid)]


def _check_image(image):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected one uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}.")
    return image


def _model_align_corners(model):
    try:
        return bool(model.get_layer("logits").align_corners)
    except (AttributeError, ValueError):
        raise ValueError("align_corners: this model has no PSPNet 'logits' layer to read it from; pass it.") from None


def _resize(x, size, align_corners=False):
    """F.interpolate(mode="bilinear"): half-pixel centres (align_corners=False) or align_corners=True.
    x: [N, h, w, C] -> [N, size[0], size[1], C] float32."""
    return tf.raw_ops.ResizeBilinear(images=x, size=size, align_corners=align_corners,
                                     half_pixel_centers=not align_corners)


def opencv_resize(images, size, *, uint8=False):
    """cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR) for each image, exactly.

    images: [N, H, W, C]; size: (h, w). uint8=False: float32 arithmetic (OpenCV's on a float32 image);
    uint8=True: uint8 [N, H, W, C] in and out, OpenCV's fixed-point arithmetic. Half-pixel centres, no
    antialias; the same size returns the images unchanged (cv2.resize copies).
    """
    height, width = images.shape[1], images.shape[2]
    if (height, width) == tuple(size):
        return tf.convert_to_tensor(images)
    ys0, ys1, b0, b1 = _opencv_coefficients(height, size[0], clamp_weights=False, single=uint8)
    xs0, xs1, a0, a1 = _opencv_coefficients(width, size[1], clamp_weights=True, single=uint8)
    if not uint8:
        x = tf.cast(images, tf.float32)
        rows = tf.gather(x, xs0, axis=2) * a0[:, None] + tf.gather(x, xs1, axis=2) * a1[:, None]
        return tf.gather(rows, ys0, axis=1) * b0[:, None, None] + tf.gather(rows, ys1, axis=1) * b1[:, None, None]
    # INTER_RESIZE_COEF_SCALE = 2048 weights: the horizontal pass is exact in int32, the vertical one is
    # VResizeLinearVec_32s8u: ((h0 >> 4) * b0 >> 16) + ((h1 >> 4) * b1 >> 16), then (+ 2) >> 2.
    a0, a1, b0, b1 = (np.rint(w * np.float32(2048)).astype(np.int32) for w in (a0, a1, b0, b1))
    x = tf.cast(images, tf.int32)
    rows = tf.gather(x, xs0, axis=2) * a0[:, None] + tf.gather(x, xs1, axis=2) * a1[:, None]
    top = (tf.gather(rows, ys0, axis=1) // 16) * b0[:, None, None] // 65536
    bottom = (tf.gather(rows, ys1, axis=1) // 16) * b1[:, None, None] // 65536
    return tf.cast(tf.clip_by_value((top + bottom + 2) // 4, 0, 255), tf.uint8)


def _opencv_coefficients(source, target, clamp_weights, single):
    """OpenCV's linear resize along one axis (imgproc/src/resize.cpp): source indices [target] x 2 and
    float32 weights [target] x 2. f = (d + 0.5) / (target / source) - 0.5, s = floor(f), weights
    (1 - (f - s), f - s) in float; f is rounded to float first (single: what matches OpenCV's uint8
    results) or kept in double (its float results). Columns outside the image take the edge pixel with
    weight 1 (clamp_weights); rows only clamp the indices and keep the weights (it matters in fixed point)."""
    f = (np.arange(target) + 0.5) * (1.0 / (target / source)) - 0.5
    if single:
        f = f.astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s).astype(np.float32)
    if clamp_weights:
        f[(s < 0) | (s >= source - 1)] = 0
    return np.clip(s, 0, source - 1), np.clip(s + 1, 0, source - 1), np.float32(1) - f, f


# reduce_retracing: window chunks of one size share a trace; a whole image of a new size adds one.
@tf.function(reduce_retracing=True)
def _logits(model, images):
    """[N, h, w, 3] normalised -> [N, h, w, C] float32 logits."""
    logits = model(images, training=False) if isinstance(model, keras.Model) else model(images)
    if isinstance(logits, dict):
        logits = logits["main"]
    return tf.cast(logits, tf.float32)


@tf.function(reduce_retracing=True)
def _semseg_windows(model, windows):
    """net_process with flip: [N, h, w, 3] -> [N, h, w, C], the mean of the softmax of each window and
    of its mirror image (flipped back). The model's output already has the window's size (semseg's
    PSPNet resizes with align_corners=True to (h - 1) / 8 * 8 + 1 = h), so test.py's own resize is a no-op."""
    n = tf.shape(windows)[0]
    p = tf.nn.softmax(_logits(model, tf.concat([windows, tf.reverse(windows, axis=[2])], axis=0)), axis=-1)
    return (p[:n] + tf.reverse(p[n:], axis=[2])) / 2.0


def _overlap_average(model, image, ys, xs, window, window_batch, run):
    """Runs `run(model, windows)` on every window (y in ys, x in xs) of image [H, W, 3] of size `window`
    (h, w), window_batch at a time, and averages the [h, w, C] outputs where windows overlap.

    Returns [H, W, C] float32. Every pixel must be covered.
    """
    height, width = image.shape[0], image.shape[1]
    win_h, win_w = window
    starts = [(y, x) for y in ys for x in xs]
    offsets = (np.arange(win_h)[:, None] * width + np.arange(win_w)[None, :]).reshape(-1)
    total = None
    for first in range(0, len(starts), max(int(window_batch), 1)):
        chunk = starts[first:first + window_batch]
        windows = tf.stack([image[y:y + win_h, x:x + win_w] for y, x in chunk])
        values = run(model, windows)
        if total is None:
            total = tf.zeros([height * width, values.shape[-1]], tf.float32)
        index = (np.array([y * width + x for y, x in chunk])[:, None] + offsets[None, :]).reshape(-1, 1)
        total = tf.tensor_scatter_nd_add(total, index, tf.reshape(values, [-1, values.shape[-1]]))
    # Windows form a grid (every y with every x), so the coverage count is separable.
    rows, cols = np.zeros(height), np.zeros(width)
    for y in ys:
        rows[y:y + win_h] += 1
    for x in xs:
        cols[x:x + win_w] += 1
    count = (rows[:, None] * cols[None, :]).reshape(-1, 1).astype(np.float32)
    if not count.all():
        raise ValueError("the windows leave pixels uncovered.")
    return tf.reshape(total / count, [height, width, -1])


__all__ = ["MMSEG_CITYSCAPES", "MMSEG_TTA_RATIOS", "mmseg_predict", "mmseg_rescaled_size", "opencv_resize",
           "semseg_predict", "semseg_scaled_size"]

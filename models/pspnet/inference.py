"""Semantic segmentation inference: whole image or sliding window, flip and
multi-scale averaging, class maps, colour masks and overlays, and loading
a checkpoint for inference (load_inference_model).

predict_logits averages softmax probabilities (not raw logits) over windows,
flips and scales, as the PSPNet reference evaluation does: probabilities of
different scales are on a common footing, raw logits are not.
"""
import math

import keras
import numpy as np
import tensorflow as tf


def predict_classes(logits):
    """Class map: argmax over the class axis (axis 3), as the reference.

    logits: [B, H, W, C] logits or probabilities -> [B, H, W] int32.
    """
    return tf.argmax(logits, axis=3, output_type=tf.int32)


def _pair(value):
    return (int(value), int(value)) if np.isscalar(value) else tuple(int(v) for v in value)


def predict_logits(
    model,
    images,
    *,
    mode="whole",
    crop_size=(713, 713),
    stride=None,
    flip=False,
    scales=(1.0,),
    num_classes=None,
    window_batch=8,
):
    """Class probabilities for images, averaged over windows, flips and scales.

    Args:
      model: a PSPNet keras.Model (a dict output uses its "main" entry) or any
        callable mapping [N, h, w, 3] float32 to logits [N, h, w, C] (e.g. the
        `serve` function of a reloaded SavedModel).
      images: [B, H, W, 3] float32, already normalised.
      mode: "whole" runs the model on the whole image; "sliding" on crop_size
        windows placed every `stride` pixels. The image is zero padded at the
        bottom/right (zero is the mean of normalised images) so that every window
        is full size, also when the image is smaller than the crop; each pixel
        averages the windows that cover it; the padding is cropped off.
      crop_size: (h, w) or int: window size for mode="sliding".
      stride: (h, w) or int; default ceil(2/3 of crop_size), as the reference.
      flip: also run on the horizontally flipped images and average.
      scales: resize the images by each factor (bilinear), predict, resize the
        probabilities back to H x W and average (e.g. 0.5 ... 1.75).
      num_classes: if given, checked against the model's output.
      window_batch: at most this many windows per model call (bounds memory).

    Returns:
      [B, H, W, C] float32 softmax probabilities (argmax with predict_classes).

    One compiled graph serves every image size (no retracing per size).
    """
    if mode not in ("whole", "sliding"):
        raise ValueError(f'mode must be "whole" or "sliding", got {mode!r}.')
    crop = _pair(crop_size)
    stride = _pair(stride) if stride is not None else tuple(math.ceil(c * 2 / 3) for c in crop)
    probabilities = _predict(
        model,
        tf.convert_to_tensor(images, tf.float32),
        mode=mode,
        crop=crop,
        stride=stride,
        flip=bool(flip),
        scales=tuple(float(s) for s in scales),
        window_batch=int(window_batch),
    )
    if num_classes is not None and probabilities.shape[-1] != num_classes:
        raise ValueError(f"The model predicts {probabilities.shape[-1]} classes, expected num_classes={num_classes}.")
    return probabilities


def _softmax(model, images):
    """[N, h, w, 3] -> [N, h, w, C] float32 probabilities."""
    if isinstance(model, keras.Model):
        logits = model(images, training=False)
    else:
        logits = model(images)
    if isinstance(logits, dict):
        logits = logits["main"]
    return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)


# reduce_retracing: after a second image size the trace generalises H, W (and
# B) to unknown, so later sizes reuse it. Python arguments key the cache.
@tf.function(reduce_retracing=True)
def _predict(model, images, *, mode, crop, stride, flip, scales, window_batch):
    batch, height, width = tf.unstack(tf.shape(images)[:3])
    total = 0.0
    for scale in scales:
        x = images
        if scale != 1.0:
            size = tf.cast(tf.round(tf.cast(tf.stack([height, width]), tf.float32) * scale), tf.int32)
            x = tf.image.resize(images, tf.maximum(size, 1), method="bilinear")
        if flip:
            x = tf.concat([x, tf.reverse(x, axis=[2])], axis=0)
        if mode == "whole":
            p = _softmax(model, x)
        else:
            p = _sliding_window(model, x, crop, stride, window_batch)
        if flip:
            p = (p[:batch] + tf.reverse(p[batch:], axis=[2])) / 2.0
        if scale != 1.0:
            p = tf.image.resize(p, tf.stack([height, width]), method="bilinear")
        total += p
    return total / len(scales)


def _sliding_window(model, images, crop, stride, window_batch):
    """[B, H, W, 3] -> [B, H, W, C] probabilities averaged over overlapping windows."""
    batch, height, width = tf.unstack(tf.shape(images)[:3])
    (crop_h, crop_w), (stride_h, stride_w) = crop, stride
    rows = 1 + (tf.maximum(height - crop_h, 0) + stride_h - 1) // stride_h
    cols = 1 + (tf.maximum(width - crop_w, 0) + stride_w - 1) // stride_w
    padded_h = crop_h + (rows - 1) * stride_h
    padded_w = crop_w + (cols - 1) * stride_w
    padded = tf.pad(images, [[0, 0], [0, padded_h - height], [0, padded_w - width], [0, 0]])

    # [B, rows, cols, crop_h*crop_w*3], flattened in (y, x, channel) order.
    patches = tf.image.extract_patches(
        padded, sizes=[1, crop_h, crop_w, 1], strides=[1, stride_h, stride_w, 1], rates=[1, 1, 1, 1], padding="VALID"
    )
    windows = tf.reshape(patches, [-1, crop_h, crop_w, 3])
    probabilities = _run_in_batches(model, windows, window_batch)
    num_classes = tf.shape(probabilities)[-1]

    # Overlap-add: the flat index of every window pixel in the padded images.
    y = (tf.range(rows) * stride_h)[:, None] + tf.range(crop_h)[None, :]  # [rows, crop_h]
    x = (tf.range(cols) * stride_w)[:, None] + tf.range(crop_w)[None, :]  # [cols, crop_w]
    index = (
        tf.range(batch)[:, None, None, None, None] * (padded_h * padded_w)
        + y[None, :, None, :, None] * padded_w
        + x[None, None, :, None, :]
    )  # [B, rows, cols, crop_h, crop_w]
    sums = tf.math.unsorted_segment_sum(
        tf.reshape(probabilities, [-1, num_classes]), tf.reshape(index, [-1]), batch * padded_h * padded_w
    )
    sums = tf.reshape(sums, [batch, padded_h, padded_w, num_classes])
    # Windows lie on a regular grid, so the coverage count is separable.
    count = _coverage(rows, stride_h, crop_h, padded_h)[:, None] * _coverage(cols, stride_w, crop_w, padded_w)[None, :]
    return (sums / count[None, :, :, None])[:, :height, :width]


def _coverage(num_windows, stride, crop, size):
    """[size] float32: how many windows (at k*stride, length crop) cover each position."""
    position = tf.range(size)[None, :]
    start = (tf.range(num_windows) * stride)[:, None]
    return tf.reduce_sum(tf.cast((position >= start) & (position < start + crop), tf.float32), axis=0)


def _run_in_batches(model, windows, window_batch):
    """Runs the model on [N, h, w, 3] windows, at most window_batch per call."""
    n = tf.shape(windows)[0]
    # Equal-sized chunks, so padding adds fewer than `chunks` dummy windows.
    chunks = (n + window_batch - 1) // window_batch
    chunk = (n + chunks - 1) // chunks
    windows = tf.pad(windows, [[0, chunks * chunk - n], [0, 0], [0, 0], [0, 0]])
    windows = tf.reshape(windows, tf.concat([[chunks, chunk], tf.shape(windows)[1:]], axis=0))
    out = tf.map_fn(lambda w: _softmax(model, w), windows, fn_output_signature=tf.float32, parallel_iterations=1)
    out = tf.reshape(out, tf.concat([[chunks * chunk], tf.shape(out)[2:]], axis=0))
    return out[:n]


def colorize(class_map, palette):
    """Colour mask from a class map.

    class_map: [..., H, W] integer class ids (NumPy or tensor).
    palette: [K, 3] RGB colours (e.g. the Cityscapes trainId palette from
      data.cityscapes); ids outside [0, K) (such as 255 = ignore) become black.
    Returns [..., H, W, 3] uint8 NumPy array.
    """
    class_map = np.asarray(class_map).astype(np.int64)
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    colours = np.concatenate([palette, np.zeros((1, 3), np.uint8)])
    outside = (class_map < 0) | (class_map >= len(palette))
    return colours[np.where(outside, len(palette), class_map)]


def overlay(image_uint8, color_mask, alpha=0.5):
    """Blends a colour mask onto an image: (1 - alpha) * image + alpha * mask.

    image_uint8, color_mask: [..., H, W, 3] uint8. Returns the same shape, uint8 (rounded).
    """
    image = np.asarray(image_uint8, dtype=np.float64)
    mask = np.asarray(color_mask, dtype=np.float64)
    return np.clip(np.round((1.0 - alpha) * image + alpha * mask), 0, 255).astype(np.uint8)


def load_inference_model(checkpoint, precision="float32"):
    """A .keras PSPNet file (train.py's, models.convert's) -> a model with only the main logits [B, H, W, C].

    precision: "float32", or "bfloat16" (models.precision.with_precision, applied to the PSPNet itself, whose
    builder keeps its classifiers float32; the logits stay float32).
    Loaded with safe_mode=True (models.checkpoints.load_keras_file). Raises
    models.checkpoints.CheckpointError (one line naming the file) for a file that
    cannot be read or holds another kind of model (a Mask R-CNN one: "pass --model mask_rcnn").
    """
    from models import checkpoints
    from models.precision import with_precision
    from models.pspnet.model import inference_model

    model = checkpoints.check_kind(checkpoints.load_keras_file(checkpoint), checkpoints.PSPNET, checkpoint,
                                   hint="pass --model mask_rcnn")
    model = with_precision(model, precision)
    return inference_model(model) if isinstance(model.output, dict) else model

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
    """[B, H, W, 3] -> [B, H, W, C] probabilities averaged over overlapping windows.

    Written with pad, gather, reshape, transpose and one loop only (no
    extract_patches, no segment or scatter ops), so the graph converts with
    tf2onnx at its default opset and runs in onnxruntime, in OpenVINO (after
    models.export.onnx_loops fixes the loop's ONNX form) and, at a fixed size, in
    LiteRT with builtin ops: the export (models.export.pspnet) serves this same
    function. About as fast as the extract_patches + unsorted_segment_sum version it
    replaced (47.9 s vs 46.0 s, 1024x2048, PSPNet-50 at 713, 2 threads).
    """
    batch, height, width = tf.unstack(tf.shape(images)[:3])
    (crop_h, crop_w), (stride_h, stride_w) = crop, stride
    rows = 1 + (tf.maximum(height - crop_h, 0) + stride_h - 1) // stride_h
    cols = 1 + (tf.maximum(width - crop_w, 0) + stride_w - 1) // stride_w
    padded_h = crop_h + (rows - 1) * stride_h
    padded_w = crop_w + (cols - 1) * stride_w
    padded = tf.pad(images, [[0, 0], [0, padded_h - height], [0, padded_w - width], [0, 0]])

    # Windows on the grid, cut out axis by axis: [B, rows * crop_h, cols * crop_w, 3]
    # holds window (r, c) at [r * crop_h:, c * crop_w:], then one window per batch entry.
    tiles = tf.gather(tf.gather(padded, _grid(rows, stride_h, crop_h), axis=1), _grid(cols, stride_w, crop_w), axis=2)
    windows = tf.reshape(tiles, tf.stack([batch, rows, crop_h, cols, crop_w, 3]))
    windows = tf.reshape(tf.transpose(windows, [0, 1, 3, 2, 4, 5]), tf.stack([batch * rows * cols, crop_h, crop_w, 3]))
    probabilities = _run_in_batches(model, windows, window_batch)  # [B * rows * cols, crop_h, crop_w, C]

    # Back to tiles, then overlap-added axis by axis (the windows lie on a regular grid).
    num_classes = tf.shape(probabilities)[-1]
    tiles = tf.reshape(probabilities, tf.stack([batch, rows, cols, crop_h, crop_w, num_classes]))
    tiles = tf.reshape(tf.transpose(tiles, [0, 1, 3, 2, 4, 5]),
                       tf.stack([batch, rows * crop_h, cols * crop_w, num_classes]))
    sums, count_w = _overlap_add(tiles, 2, cols, stride_w, crop_w, width)  # [B, rows * crop_h, W, C]
    sums, count_h = _overlap_add(sums, 1, rows, stride_h, crop_h, height)  # [B, H, W, C]
    return sums / (count_h[:, None] * count_w[None, :])[None, :, :, None]


def _grid(num_windows, stride, crop):
    """[num_windows * crop] int32: the positions window k covers (k * stride + i), window after window."""
    return tf.reshape((tf.range(num_windows) * stride)[:, None] + tf.range(crop)[None, :], [-1])


def _overlap_add(tiles, axis, num_windows, stride, crop, size):
    """Sums the windows covering each position 0..size-1 along one axis.

    tiles: [..., num_windows * crop (on `axis`), ...], window k's position i at k * crop + i.
    Returns (the sums, with `size` on `axis`; [size] float32 coverage counts).
    Position t lies in windows k = t // stride - j for j < ceil(crop / stride) (those
    with 0 <= k < num_windows and t - k * stride < crop): a gather per j, the invalid ones zeroed.
    """
    position = tf.range(size)
    total, count = 0.0, 0.0
    for j in range(-(-crop // stride)):
        k = position // stride - j
        offset = position - k * stride
        valid = (k >= 0) & (k < num_windows) & (offset < crop)
        index = tf.where(valid, k * crop + offset, 0)
        mask = tf.cast(valid, tf.float32)
        shape = [1] * 4
        shape[axis] = -1
        total += tf.gather(tiles, index, axis=axis) * tf.reshape(mask, shape)
        count += mask
    return total, count


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

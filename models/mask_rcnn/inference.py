"""Mask R-CNN inference pieces: class prediction, class-picked masks, pasting, oracle-box prediction.

Class picking happens in the graph (layers below), so an exported model keeps
it: the class branch's most likely object class selects that class's channel of
the mask branch.
"""
import keras
import numpy as np
import tensorflow as tf
from pycocotools import mask as mask_utils


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
    picked = tf.gather(tf.cast(mask_logits, tf.float32), tf.cast(class_ids, tf.int32), axis=-1, batch_dims=2)
    return tf.sigmoid(picked)


@keras.saving.register_keras_serializable(package="models")
class PickMaskChannel(keras.layers.Layer):
    """Call: [mask logits [B, R, h, w, K + 1], class_ids [B, R] int] -> mask probabilities [B, R, h, w] float32."""

    def call(self, inputs):
        mask_logits, class_ids = inputs
        return pick_mask_channel(mask_logits, class_ids)

    def compute_output_shape(self, input_shapes):
        return input_shapes[0][:4]


class PastedMasks:
    """N binary masks of an H x W image, each stored only on the pixel window its box can touch.

    offsets: [N, 2] int64 (top, left) of each window in the image; windows: list
    of N [h_i, w_i] bool arrays (h_i or w_i may be 0; paste_masks stores them
    column-major, the order RLE reads); image_size: (H, W).
    Every pixel outside its window is False. A pasted mask covers a small part
    of the image, so keeping only the window makes pasting and RLE encoding
    cost about the box's area instead of the image's.
    """

    def __init__(self, offsets, windows, image_size):
        self.offsets = np.asarray(offsets, np.int64).reshape(-1, 2)
        self.windows = list(windows)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if len(self.offsets) != len(self.windows):
            raise ValueError(f"{len(self.offsets)} offsets for {len(self.windows)} windows")

    def __len__(self):
        return len(self.windows)

    def __repr__(self):
        return f"PastedMasks({len(self)} masks, image_size={self.image_size})"

    def dense(self):
        """[N, H, W] bool."""
        out = np.zeros((len(self), *self.image_size), bool)
        for i, ((top, left), window) in enumerate(zip(self.offsets, self.windows)):
            out[i, top:top + window.shape[0], left:left + window.shape[1]] = window
        return out

    def rle(self):
        """COCO compressed RLE of each mask: a list of N {"size": [H, W], "counts": bytes}.

        The same dicts as pycocotools.mask.encode(np.asfortranarray(self.dense() [H, W, N]))
        gives, computed from the windows alone. COCO RLE runs down the columns
        (Fortran order) and starts with a run of zeros; a run boundary is a
        pixel whose value differs from the one above it (or, at the top of a
        column, from the last pixel of the previous column).
        """
        height, width = self.image_size
        total = height * width
        uncompressed = []
        for (top, left), window in zip(self.offsets, self.windows):
            rows, cols = window.shape
            # One zero row above and below each window column: changes at the window's top and bottom edges
            # show up, and no change runs from one column into the next (outside the window is all zeros).
            columns = np.zeros((cols, rows + 2), bool)
            columns[:, 1:-1] = window.T  # a plain copy for paste_masks' column-major windows
            flat = columns.ravel()
            changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
            col, row = np.divmod(changes, rows + 2)
            # Padded row p of window column c is image pixel (top + p - 1, left + c): column-major index below.
            # A run of ones that reaches the image's last pixel ends at index H * W: no run starts there.
            starts = (left + col) * height + (top + row - 1)
            if rows == height:
                # The window spans whole columns: a run reaching the bottom of one column and a run starting at
                # the top of the next are one run; their two boundaries fall on the same index and cancel.
                same = starts[1:] == starts[:-1]
                keep = np.ones(len(starts), bool)
                keep[1:] &= ~same
                keep[:-1] &= ~same
                starts = starts[keep]
            starts = starts[starts < total]
            counts = np.diff(starts, prepend=0, append=total).astype(np.uint32)
            uncompressed.append({"size": [height, width], "counts": counts})
        if not uncompressed:
            return []
        # frPyObjects compresses a list of uncompressed RLEs ({"counts": run lengths, "size": [H, W]}).
        return mask_utils.frPyObjects(uncompressed, height, width)


def _window_taps(start, end, size, length):
    """Bilinear taps of every box's window along one axis, all boxes at once.

    start, end: [N] float32 box edges on this axis (pixels); size: the mask's
    size on this axis; length: the image's. The mask gets a 1-pixel zero border
    (so it fades to 0 across its box edge); image pixel r (centre r + 0.5) reads
    the bordered mask at index position = (r + 0.5 - start) / pixel + 0.5, pixel
    = (end - start) / size, with weight max(0, 1 - |position - k|) on bordered
    row k: non-zero only on k0 = floor(position) and k0 + 1, the two taps.
    A box's window is the pixels with a non-zero weight on a mask row
    (1..size), clipped to the image; every other pixel reads only the zero
    border, so its value is 0. An empty box (end <= start) has no window.
    Returns (first [N] int64, the first pixel of each window; a list of N
    (k0 [n_i] int, w0 [n_i] float32, w1 [n_i] float32), the taps of the n_i
    window pixels: weight w0 on bordered row k0, w1 on k0 + 1).
    """
    count = len(start)
    pixel = (end - start) / np.float32(size)
    valid = np.isfinite(pixel) & (pixel > 0)
    # position in (0, size + 1) <=> r in (start - pixel / 2 - 0.5, end + pixel / 2 - 0.5): candidates with a
    # pixel of slack each side for rounding; the weights below then decide exactly.
    with np.errstate(invalid="ignore"):
        low = np.where(valid, np.floor(start - 0.5 * pixel - 0.5) - 1, 0)
        high = np.where(valid, np.ceil(end + 0.5 * pixel - 0.5) + 2, 0)
    low = np.clip(low, 0, length).astype(np.int64)
    candidates = np.maximum(np.clip(high, 0, length).astype(np.int64) - low, 0)
    box = np.repeat(np.arange(count), candidates)
    pixels = np.arange(candidates.sum()) + np.repeat(low - (np.cumsum(candidates) - candidates), candidates)
    position = (pixels.astype(np.float32) + np.float32(0.5) - start[box]) / pixel[box] + np.float32(0.5)
    k0 = np.floor(position)
    w0 = np.maximum(np.float32(0), 1 - np.abs(position - k0))
    w1 = np.maximum(np.float32(0), 1 - np.abs(position - (k0 + 1)))
    k0 = k0.astype(np.intp)
    used = np.flatnonzero(((k0 >= 1) & (k0 <= size) & (w0 > 0)) | ((k0 >= 0) & (k0 < size) & (w1 > 0)))
    # position grows with r, so each box's used pixels are one contiguous run.
    stops = np.cumsum(np.bincount(box[used], minlength=count))
    begins = stops - np.diff(stops, prepend=0)
    first = np.zeros(count, np.int64)
    some = stops > begins
    first[some] = pixels[used[begins[some]]]
    k0, w0, w1 = k0[used], w0[used], w1[used]
    return first, [(k0[b:e], w0[b:e], w1[b:e]) for b, e in zip(begins, stops)]


def _paste_values(masks, boxes, image_size):
    """Resampled mask values on each instance's window, before thresholding.

    masks: [N, h, w] probabilities; boxes: [N, 4] (y1, x1, y2, x2) pixels;
    image_size: (H, W); NumPy arrays or tensors. Yields, per instance, (top,
    left, values [h_i, w_i] float32, column-major): Wy @ bordered mask @ Wx^T on
    the window (_window_taps gives Wy's and Wx's non-zero entries); the value
    is 0 everywhere else.
    """
    masks = np.asarray(masks, np.float32)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    height, width = image_size
    bordered = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    tops, row_taps = _window_taps(boxes[:, 0], boxes[:, 2], masks.shape[1], height)
    lefts, col_taps = _window_taps(boxes[:, 1], boxes[:, 3], masks.shape[2], width)
    # Two taps per pixel instead of products with the dense weight matrices: the same sums without the zero
    # terms, and no BLAS call. Multi-threaded BLAS splits these small products over threads that cost more
    # than they save: on a busy 2-core machine 100 windows took 0.4 s through matmul, 4 ms this way.
    for mask, top, left, (ky, y0, y1), (kx, x0, x1) in zip(bordered, tops, lefts, row_taps, col_taps):
        rows = mask[ky] * y0[:, None] + mask[ky + 1] * y1[:, None]  # Wy @ mask: [h_i, w + 2]
        rows = np.ascontiguousarray(rows.T)
        # (Wy @ mask) @ Wx^T, computed transposed ([w_i, h_i]: whole-row gathers) and returned as a
        # column-major [h_i, w_i] view, the order COCO RLE reads.
        values = rows[kx] * x0[:, None]
        values += rows[kx + 1] * x1[:, None]
        yield int(top), int(left), values.T


def paste_masks(masks, boxes, image_size, threshold=0.5):
    """Paste RoI masks into the image, each on the pixel window its box can touch.

    masks: [N, h, w] float probabilities; boxes: [N, 4] float (y1, x1, y2, x2)
    in pixels of the target image; image_size: (H, W); NumPy arrays or tensors.
    Each mask gets a 1-pixel zero border (so it fades to 0 across its box
    edge), is resampled bilinearly at the image's pixel centres inside the
    enlarged box (separable, see _window_taps), and thresholded: value >=
    threshold. threshold must be > 0 (pixels outside the windows have value 0
    and are not stored). An empty box pastes nothing.
    Returns PastedMasks (.dense() [N, H, W] bool, .rle() COCO RLEs).
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 (outside its window a mask is 0), got {threshold}")
    offsets, windows = [], []
    for top, left, values in _paste_values(masks, boxes, image_size):
        offsets.append((top, left))
        windows.append(values >= threshold)
    return PastedMasks(offsets, windows, image_size)


def predict_oracle_masks(model, dataset, *, class_source="predicted", threshold=0.5):
    """Masks for the ground-truth boxes of every image of an evaluation dataset.

    model: the heads model (build_mask_head_model) or a MaskHeadTrainer.
    dataset: batches as data.coco.make_dataset(..., training=False) yields them.
    class_source: "predicted" (the class branch picks the channel and gives the
        category and score: the default, what a detector would do) or
        "ground_truth" (the annotated class picks the channel; score = that
        class's probability).
    Returns a list, one dict per image: image_id int, boxes [N, 4] float32 in
    pixels of the original image, masks a PastedMasks of N masks at the original
    image size (H, W) (.dense() [N, H, W] bool, .rle() COCO RLEs, as
    data.coco.segm_results takes them), class_ids [N] int32 (1..K), scores [N] float32.
    """
    if class_source not in ("predicted", "ground_truth"):
        raise ValueError(f'class_source must be "predicted" or "ground_truth", got {class_source!r}')
    network = getattr(model, "network", model)

    @tf.function(reduce_retracing=True)
    def run(image, rois):
        return network({"image": image, "rois": rois}, training=False)

    predictions = []
    for batch in dataset:
        outputs = run(batch["image"], batch["boxes"])
        if class_source == "predicted":
            class_ids, scores, masks = outputs["class_ids"], outputs["scores"], outputs["masks"]
        else:
            class_ids = batch["class_ids"]
            probs = tf.nn.softmax(outputs["class_logits"], axis=-1)
            scores = tf.gather(probs, class_ids, axis=-1, batch_dims=2)
            masks = pick_mask_channel(outputs["mask_logits"], class_ids)
        for b in range(int(tf.shape(batch["image"])[0])):
            n = int(batch["num_instances"][b])
            original = batch["original_size"][b].numpy()
            ratio = tf.cast(tf.tile(original / batch["image_size"][b].numpy(), [2]), tf.float32)
            boxes = (batch["boxes"][b, :n] * ratio).numpy()
            predictions.append({
                "image_id": int(batch["image_id"][b]), "boxes": boxes,
                "masks": paste_masks(masks[b, :n], boxes, (int(original[0]), int(original[1])), threshold),
                "class_ids": class_ids[b, :n].numpy().astype(np.int32),
                "scores": scores[b, :n].numpy().astype(np.float32)})
    return predictions

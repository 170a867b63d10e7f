"""Pasting the mask branch's 28x28 masks into the image (torchvision's paste_masks_in_image), as compact runs.

paste_masks resamples each mask into its box at the image's resolution and
thresholds it; PastedMasks keeps the result as runs of ones (COCO's
column-major order), so an image with many instances never holds N dense
H x W masks, and gives them dense or as COCO RLEs.
"""
import numpy as np
from pycocotools import mask as mask_utils


class PastedMasks:
    """N binary masks of an H x W image, kept as runs of ones in COCO's column-major pixel order.

    boundaries: list of N int64 arrays [start0, end0, start1, end1, ...]: where
    each run of ones starts and ends (exclusive), as column-major pixel indices
    (column * H + row, in 0..H * W), increasing; runs neither overlap nor touch.
    image_size: (H, W). A pasted mask is a few runs per column of its box, so
    runs cost about the box's width, not the image's area; dense() and rle()
    both derive from them.
    """

    def __init__(self, boundaries, image_size):
        self.boundaries = [np.asarray(b, np.int64) for b in boundaries]
        self.image_size = (int(image_size[0]), int(image_size[1]))

    @classmethod
    def from_dense(cls, masks):
        """masks [N, H, W] 0/1 -> PastedMasks of the same masks."""
        masks = np.asarray(masks, bool)
        count, height, width = masks.shape
        # Column-major, with a zero before and after each mask: a boundary is a pixel differing from the one before.
        flat = np.zeros((count, height * width + 2), np.int8)
        flat[:, 1:-1] = masks.transpose(0, 2, 1).reshape(count, -1)
        mask, index = np.nonzero(np.diff(flat, axis=1))
        return cls(_split_by(index, mask, count), (height, width))

    def __len__(self):
        return len(self.boundaries)

    def __repr__(self):
        return f"PastedMasks({len(self)} masks, image_size={self.image_size})"

    def areas(self):
        """[N] int64: the number of pixels of each mask."""
        return np.array([(b[1::2] - b[0::2]).sum() for b in self.boundaries], np.int64)

    def dense(self):
        """[N, H, W] bool."""
        height, width = self.image_size
        out = np.zeros((len(self), height, width), bool)
        for mask, b in zip(out, self.boundaries):
            if not len(b):
                continue
            starts, lasts = b[0::2], b[1::2] - 1  # first and last pixel of each run
            (first_col, first_row), (last_col, last_row) = np.divmod(starts, height), np.divmod(lasts, height)
            # Fill only the rectangle of rows and columns the runs touch (whole columns if a run goes on into the
            # next column): +1 at each run's first pixel, -1 after its last, cumulative sum.
            top, bottom = (0, height) if np.any(last_col > first_col) else (first_row.min(), last_row.max() + 1)
            left, rows = first_col[0], bottom - top
            delta = np.zeros((last_col[-1] + 1 - left) * rows + 1, np.int8)
            delta[(first_col - left) * rows + first_row - top] = 1
            delta[(last_col - left) * rows + last_row - top + 1] -= 1  # may fall on the next run's start
            block = np.cumsum(delta[:-1], dtype=np.int8).view(bool).reshape(-1, rows)
            mask[top:bottom, left:left + len(block)] = block.T
        return out

    def rle(self):
        """COCO compressed RLE of each mask: a list of N {"size": [H, W], "counts": bytes}.

        The same dicts as pycocotools.mask.encode(np.asfortranarray(self.dense() [H, W, N]))
        gives: COCO RLE counts alternate runs of zeros and ones down the
        columns, starting with zeros, i.e. the differences of the boundaries.
        """
        height, width = self.image_size
        total = height * width
        uncompressed = []
        for b in self.boundaries:
            # A run of ones reaching the image's last pixel ends at H * W: no run of zeros follows it.
            counts = np.diff(b[:-1] if len(b) and b[-1] == total else b, prepend=0, append=total)
            uncompressed.append({"size": [height, width], "counts": counts.astype(np.uint32)})
        if not uncompressed:
            return []
        # frPyObjects compresses a list of uncompressed RLEs ({"counts": run lengths, "size": [H, W]}).
        return mask_utils.frPyObjects(uncompressed, height, width)


def _split_by(values, group, count):
    """values [n] and their group [n] in 0..count - 1, non-decreasing -> list of count arrays, group by group."""
    return np.split(values, np.cumsum(np.bincount(group, minlength=count))[:-1]) if count else []


def _window_taps(start, end, size, length):
    """Bilinear taps of every box's window along one axis, all boxes at once.

    start, end: [N] float64 box edges on this axis (pixels); size: the mask's
    size on this axis; length: the image's. The mask gets a 1-pixel zero border
    (so it fades to 0 across its box edge); image pixel r (centre r + 0.5) reads
    the bordered mask at index position = (r + 0.5 - start) / pixel + 0.5, pixel
    = (end - start) / size, with weight max(0, 1 - |position - k|) on bordered
    row k: non-zero only on k0 = floor(position) and k0 + 1, the two taps.
    A box's window is the pixels with a non-zero weight on a mask row
    (1..size), clipped to the image; every other pixel reads only the zero
    border, so its value is 0. An empty box (end <= start) has no window.
    Returns, for the n window pixels of all boxes (grouped by box, each box's
    pixels increasing): box [n] int64, pixel [n] int64, k0 [n] intp, w0 [n]
    float64, w1 [n] float64 (weight w0 on bordered row k0, w1 on k0 + 1).
    """
    count = len(start)
    pixel = (end - start) / size
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
    position = (pixels + 0.5 - start[box]) / pixel[box] + 0.5
    k0 = np.floor(position)
    w0 = np.maximum(0, 1 - np.abs(position - k0))
    w1 = np.maximum(0, 1 - np.abs(position - (k0 + 1)))
    k0 = k0.astype(np.intp)
    used = ((k0 >= 1) & (k0 <= size) & (w0 > 0)) | ((k0 >= 0) & (k0 < size) & (w1 > 0))
    return box[used], pixels[used], k0[used], w0[used], w1[used]


def _torchvision_paste_boxes(boxes, mask_h, mask_w):
    """The boxes on which paste_masks' grid reproduces torchvision's paste_masks_in_image.

    torchvision grows each box by (w + 2) / w about its centre (float32; w =
    the mask's width, for both axes), truncates it to integers (Y1, X1, Y2, X2),
    resizes the 1-pixel-bordered mask bilinearly (align_corners=False) to the
    h' = Y2 - Y1 + 1 by w' = X2 - X1 + 1 pixels starting at (Y1, X1). Pixel r
    of that window reads bordered row (r - Y1 + 0.5) * (h + 2) / h' - 0.5;
    paste_masks reads (r + 0.5 - y1) * h / (y2 - y1) + 0.5, the same affine map
    when y1 = Y1 + h' / (h + 2) and y2 = Y1 + h' * (h + 1) / (h + 2) (and the
    same along x). Outside the window both read only the zero border.
    boxes: [N, 4] float64 (y1, x1, y2, x2). Returns [N, 4] float64.
    """
    boxes = boxes.astype(np.float32)
    scale = np.float32((mask_w + 2) / mask_w)
    half = (boxes[:, 2:] - boxes[:, :2]) * np.float32(0.5) * scale
    centre = (boxes[:, 2:] + boxes[:, :2]) * np.float32(0.5)
    first = np.trunc(centre - half).astype(np.float64)  # torch's float -> int64 conversion truncates
    size = np.trunc(centre + half) - first + 1  # [N, 2] (h', w')
    bordered = np.array([mask_h + 2, mask_w + 2], np.float64)
    out = np.concatenate([first + size / bordered, first + size * (bordered - 1) / bordered], axis=1)
    # An inverted box (Y2 < Y1 or X2 < X1) covers no pixel in torchvision: an empty box here.
    inverted = np.any(size < 1, axis=1)
    out[inverted] = np.concatenate([first, first], axis=1)[inverted]
    return out


def paste_masks(masks, boxes, image_size, threshold=0.5, *, torchvision_compatible=False, above=False):
    """Paste RoI masks into the image as runs of pixels, computed from each window column's profile.

    masks: [N, h, w] float probabilities (finite); boxes: [N, 4] float (y1, x1, y2, x2)
    in pixels of the target image; image_size: (H, W); NumPy arrays or tensors.
    torchvision_compatible: paste as torchvision's paste_masks_in_image does
    (each box grown by one mask cell each side and rounded to whole pixels,
    then the same bilinear resampling; thresholding its output at `threshold`
    gives the same pixels up to float rounding; it also pastes a 1-pixel
    window for an empty box): for models converted from torchvision. Default
    False: the mask's cells are spread exactly over the box, as described next.
    Each mask gets a 1-pixel zero border (so it fades to 0 across its box
    edge), is resampled bilinearly at the image's pixel centres (separable, see
    _window_taps), and thresholded: a pixel is on iff its value >= threshold,
    or with above=True iff its value > threshold (torchvision's coco_eval.py
    keeps `masks > 0.5`; the rules differ where a mask is exactly the
    threshold, as the 0.5 of a zero logit is). threshold must be > 0 (outside
    its window a mask is 0). An empty box pastes nothing.
    No pixel value is computed: down each window column, the value of row r
    is the piecewise-linear interpolation of the column's profile (the
    bordered mask's h + 2 rows interpolated at the column, [h + 2]) at
    position(r) = (r + 0.5 - y1) / pixel + 0.5, pixel = (y2 - y1) / h,
    increasing in r; so the column's runs start and end where the profile
    crosses the threshold, solved per crossing. The crossings are solved in
    float64 from float32 profiles: a pixel whose exact value lies within
    ~1e-5 of the threshold may come out either way.
    Returns PastedMasks (.dense() [N, H, W] bool, .rle() COCO RLEs).
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 (outside its window a mask is 0), got {threshold}")
    masks = np.asarray(masks, np.float32)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    count, mask_h, mask_w = masks.shape
    if torchvision_compatible:
        boxes = _torchvision_paste_boxes(boxes, mask_h, mask_w)
    height, width = image_size
    y1, pixel = boxes[:, 0], (boxes[:, 2] - boxes[:, 0]) / mask_h
    # Every window column of every box that has rows at all.
    box, column, kx, x0, x1 = _window_taps(boxes[:, 1], boxes[:, 3], mask_w, width)
    keep = (np.isfinite(pixel) & (pixel > 0))[box]
    box, column, kx, x0, x1 = box[keep], column[keep], kx[keep], x0[keep], x1[keep]

    # Profiles [C, h + 2] of the C window columns: the bordered masks, transposed so that each mask column is a
    # contiguous row to gather, interpolated at each window column with its two taps.
    bordered = np.zeros((count, mask_w + 2, mask_h + 2), np.float32)
    bordered[:, 1:-1, 1:-1] = masks.transpose(0, 2, 1)
    bordered = bordered.reshape(-1, mask_h + 2)
    # In place: fresh multi-megabyte temporaries cost more in page faults than the arithmetic.
    tap = box * (mask_w + 2) + kx
    profiles = np.take(bordered, tap, axis=0)
    # The taps' weights sum to exactly 1 in float32 (x0 = 1 - x1 inside a window, where both are non-zero;
    # float32(1) - float32(x1) rounds so that the sum rounds back to 1), as torchvision's interpolation's do: a
    # plateau of exactly the threshold (a zero logit's 0.5) stays exactly at it: on, or off with `above`.
    x1 = x1.astype(np.float32)
    x0 = np.where(x0 > 0, np.float32(1) - x1, np.float32(0))
    profiles *= x0[:, None]
    right = np.take(bordered, tap + 1, axis=0)
    right *= x1[:, None]
    profiles += right

    # Crossings: segments k..k + 1 of a profile with one end on (>= threshold) and the other off. Every profile
    # starts and ends at 0 < threshold, so a column's crossings alternate (a run starts, a run ends, ...), and
    # the flattened profiles change between on and off only at crossings, never from one profile to the next.
    profiles = profiles.ravel()
    crossing = np.flatnonzero(np.diff(profiles > threshold if above else profiles >= threshold))
    segment, k = np.divmod(crossing, mask_h + 2)  # profile (window column) and k
    g0, g1 = profiles[crossing].astype(np.float64), profiles[crossing + 1].astype(np.float64)
    at = k + (threshold - g0) / (g1 - g0)  # the crossing's position, in k..k + 1
    run_box = box[segment[0::2]]
    row = (at - 0.5) * np.repeat(pixel[run_box], 2) + np.repeat(y1[run_box], 2) - 0.5  # position(row) = at
    # A run holds the rows at or after its rising crossing and at or before its falling one; above=True: strictly
    # after and before (a row exactly at a crossing has exactly the threshold's value).
    if above:
        first = np.clip(np.floor(row[0::2]) + 1, 0, height).astype(np.int64)
        stop = np.clip(np.ceil(row[1::2]), 0, height).astype(np.int64)
    else:
        first = np.clip(np.ceil(row[0::2]), 0, height).astype(np.int64)
        stop = np.clip(np.floor(row[1::2]) + 1, 0, height).astype(np.int64)
    offset = column[segment[0::2]] * height  # column-major index of the column's row 0
    some = stop > first
    starts, ends, run_box = (offset + first)[some], (offset + stop)[some], run_box[some]
    # Runs of a mask with no pixel between them are one run: in a column, when no pixel centre falls where the
    # profile dips under the threshold (or rounding puts a falling crossing past the next rising one); across
    # columns, a run reaching the bottom of the image and one starting at the top of the next column.
    # separate[i]: pixels or another mask lie between runs i - 1 and i (True before the first, after the last).
    separate = np.ones(len(starts) + 1, bool)
    separate[1:-1] = (ends[:-1] < starts[1:]) | (run_box[:-1] != run_box[1:])
    starts, run_box, ends = starts[separate[:-1]], run_box[separate[:-1]], ends[separate[1:]]
    boundaries = np.stack([starts, ends], axis=1).ravel()
    return PastedMasks(_split_by(boundaries, np.repeat(run_box, 2), count), image_size)



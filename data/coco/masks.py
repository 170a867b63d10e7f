"""COCO segmentations as masks: full-image rasterisation (pycocotools) and the compact box crops.

Kept free of TensorFlow: the record conversion's worker processes use it too.
"""
import numpy as np
from pycocotools import mask as mask_utils


def annotation_mask(segmentation, height, width):
    """Full-image binary mask [H, W] uint8 of one COCO segmentation.

    segmentation: polygons [[x1, y1, x2, y2, ...], ...] (parts merged), an
    uncompressed RLE {"counts": [int, ...], "size": [H, W]}, or a compressed RLE
    {"counts": str or bytes, "size": [H, W]}.
    """
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    return mask_utils.decode(rle)


def crop_mask(mask, box, size):
    """Resample a full-image mask inside `box` to [size, size] uint8 (0..255).

    mask: [H, W] 0/1. box: (y1, x1, y2, x2) continuous pixels. Output pixel (i, j)
    is the bilinear value at the centre of bin (i, j) of the box, i.e. at index
    coordinates y1 + (i + 0.5) * (y2 - y1) / size - 0.5 (same along x); positions
    past the image border take the border pixel's value.
    """
    y1, x1, y2, x2 = box
    rows = _interpolation_matrix(y1, y2, size, mask.shape[0])
    cols = _interpolation_matrix(x1, x2, size, mask.shape[1])
    r0, r1 = _support(rows)
    c0, c1 = _support(cols)
    crop = rows[:, r0:r1] @ mask[r0:r1, c0:c1].astype(np.float32) @ cols[:, c0:c1].T
    return np.round(255.0 * np.clip(crop, 0.0, 1.0)).astype(np.uint8)


def _interpolation_matrix(start, end, size, length):
    """[size, length] bilinear (triangle) weights of `size` bin centres of [start, end) over `length` pixels."""
    centres = start + (np.arange(size) + 0.5) * (end - start) / size - 0.5
    centres = np.clip(centres, 0.0, length - 1.0)
    return np.maximum(0.0, 1.0 - np.abs(centres[:, None] - np.arange(length)[None, :])).astype(np.float32)


def _support(weights):
    """Half-open range of columns with any non-zero weight (keeps the matmul to the box's window)."""
    used = np.flatnonzero(weights.any(axis=0))
    return int(used[0]), int(used[-1]) + 1

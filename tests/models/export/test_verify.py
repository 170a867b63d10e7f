"""The export check's figures on hand-made detections and label maps (golden values worked out by hand)."""
import numpy as np
import pytest

from models.export.formats import ExportError
from models.export.verify import box_iou, match_detections, matched_share, pixel_agreement, sample_photos


def test_box_iou_golden_values():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]], np.float32)
    # Half overlap: 50 / (100 + 100 - 50) = 1/3; disjoint: 0; an empty box: 0 (no division by zero).
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 1 / 3, 0.0, 0.0]])


def _detections(boxes, class_ids, scores, size=(20, 30)):
    masks = np.zeros((len(boxes), *size), np.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, np.asarray(boxes, int)):
        mask[y1:y2, x1:x2] = 1
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "class_ids": np.asarray(class_ids),
            "scores": np.asarray(scores, np.float32), "masks": masks}


def test_matching_pairs_by_class_and_iou_best_reference_first():
    reference = _detections([[0, 0, 10, 10], [0, 0, 10, 10], [15, 5, 25, 15]], [1, 2, 1], [0.9, 0.8, 0.7])
    # Same boxes in another order; the class-2 one moved by 5 px (IoU 1/3 < 0.5: unmatched); one extra detection.
    served = _detections([[15, 5, 25, 15], [0, 0, 10, 10], [5, 0, 15, 10], [2, 2, 4, 4]], [1, 1, 2, 3],
                         [0.7005, 0.9, 0.8, 0.6])
    figures = match_detections(served, reference)
    assert (figures["reference"], figures["served"], figures["matched"]) == (3, 4, 2)
    assert figures["box_iou"] == 1.0 and figures["mask_iou"] == 1.0
    assert figures["score_difference"] == pytest.approx(0.0005, abs=1e-6)
    assert matched_share(figures) == 0.5  # 2 of max(3, 4)


def test_matching_nothing_to_nothing_is_full_agreement():
    empty = _detections(np.zeros((0, 4)), [], [])
    assert matched_share(match_detections(empty, empty)) == 1.0


def test_pixel_agreement_and_a_wrong_shape():
    assert pixel_agreement(np.array([[1, 2], [3, 4]]), np.array([[1, 2], [3, 0]])) == 0.75
    with pytest.raises(ExportError, match=r"gives a \(2, 2\) label map for a \(2, 3\) image"):
        pixel_agreement(np.zeros((2, 2)), np.zeros((2, 3)))


def test_sample_photos_are_two_different_real_photos_of_odd_sizes():
    first, second = sample_photos()
    assert first.shape == (333, 457, 3) and second.shape == (417, 301, 3) and first.dtype == np.uint8
    assert first.std() > 20  # a photo, not a blank
    fixed = sample_photos((97, 123))
    assert [p.shape for p in fixed] == [(97, 123, 3)] * 2 and not np.array_equal(*fixed)

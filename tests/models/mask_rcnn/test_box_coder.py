"""Box coding against torchvision's BoxCoder (the reference the converted weights were trained with)."""
import numpy as np
import torch
from torchvision.models.detection._utils import BoxCoder

from models.mask_rcnn.box_coder import BOX_HEAD_WEIGHTS, clip_boxes, decode_boxes, encode_boxes

XY = [1, 0, 3, 2]  # (y1, x1, y2, x2) <-> (x1, y1, x2, y2); also (dy, dx, dh, dw) <-> (dx, dy, dw, dh)


def _random_boxes(rng, n):
    y1x1 = rng.uniform(0, 500, (n, 2))
    hw = rng.uniform(1, 300, (n, 2))
    return np.concatenate([y1x1, y1x1 + hw], axis=1).astype(np.float32)


def test_encode_and_decode_match_torchvision():
    rng = np.random.default_rng(0)
    boxes, reference = _random_boxes(rng, 50), _random_boxes(rng, 50)
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    expected_deltas = coder.encode_single(torch.from_numpy(boxes[:, XY]), torch.from_numpy(reference[:, XY]))
    deltas = encode_boxes(boxes, reference, BOX_HEAD_WEIGHTS).numpy()
    np.testing.assert_allclose(deltas, expected_deltas.numpy()[:, XY], rtol=1e-5, atol=1e-5)

    large = rng.normal(0, 30, (50, 4)).astype(np.float32)  # includes scales past the clip
    expected = coder.decode_single(torch.from_numpy(large[:, XY]), torch.from_numpy(reference[:, XY])).numpy()
    np.testing.assert_allclose(decode_boxes(large, reference, BOX_HEAD_WEIGHTS).numpy(), expected[:, XY],
                               rtol=1e-5, atol=1e-3)


def test_round_trip():
    rng = np.random.default_rng(1)
    boxes, reference = _random_boxes(rng, 20), _random_boxes(rng, 20)
    back = decode_boxes(encode_boxes(boxes, reference, (1.0, 1.0, 1.0, 1.0)), reference, (1.0, 1.0, 1.0, 1.0))
    np.testing.assert_allclose(back.numpy(), boxes, rtol=1e-5, atol=1e-3)


def test_clip_to_each_images_size():
    boxes = np.array([[[-5.0, -3.0, 50.0, 80.0]], [[10.0, 10.0, 500.0, 20.0]]], np.float32)
    clipped = clip_boxes(boxes, np.array([[40, 60], [100, 200]])).numpy()
    np.testing.assert_array_equal(clipped, [[[0, 0, 40, 60]], [[10, 10, 100, 20]]])

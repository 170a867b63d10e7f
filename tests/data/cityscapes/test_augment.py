"""Paired geometry against NumPy float64 references written here."""
import numpy as np
import pytest
import tensorflow as tf

from data.cityscapes import augment


def _bilinear_reference(image, out_h, out_w):
    """Half-pixel-centre bilinear resize (no antialiasing), float64, [H, W, C]."""
    in_h, in_w = image.shape[:2]

    def weights(out_size, in_size):
        src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
        low = np.floor(src)
        frac = src - low
        lo = np.clip(low, 0, in_size - 1).astype(int)
        hi = np.clip(low + 1, 0, in_size - 1).astype(int)
        return lo, hi, frac

    y0, y1, fy = weights(out_h, in_h)
    x0, x1, fx = weights(out_w, in_w)
    image = image.astype(np.float64)
    top = image[y0][:, x0] * (1 - fx)[None, :, None] + image[y0][:, x1] * fx[None, :, None]
    bottom = image[y1][:, x0] * (1 - fx)[None, :, None] + image[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def _nearest_reference(label, out_h, out_w):
    """Half-pixel-centre nearest neighbour: source index floor((i + 0.5) * in / out)."""
    in_h, in_w = label.shape[:2]
    ys = np.minimum(np.floor((np.arange(out_h) + 0.5) * in_h / out_h).astype(int), in_h - 1)
    xs = np.minimum(np.floor((np.arange(out_w) + 0.5) * in_w / out_w).astype(int), in_w - 1)
    return label[ys][:, xs]


@pytest.mark.parametrize("in_size,out_size", [((5, 7), (8, 11)), ((9, 13), (4, 6)), ((6, 6), (6, 6))])
def test_resize_pair_bilinear_image_nearest_label(in_size, out_size):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, in_size + (3,)).astype(np.uint8)
    label = rng.integers(0, 19, in_size).astype(np.uint8)
    masks = rng.integers(0, 2, in_size + (4,)).astype(np.uint8)

    got_image, got_label = augment.resize_pair(image, label, out_size)
    _, got_masks = augment.resize_pair(image, masks, out_size)

    assert got_image.dtype == tf.float32 and got_label.dtype == tf.uint8
    np.testing.assert_allclose(got_image.numpy(), _bilinear_reference(image, *out_size), atol=1e-3)
    np.testing.assert_array_equal(got_label.numpy(), _nearest_reference(label, *out_size))
    np.testing.assert_array_equal(got_masks.numpy(), _nearest_reference(masks, *out_size))


def test_flip_pair_mirrors_both():
    image = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    label = np.arange(6, dtype=np.int32).reshape(2, 3)
    got_image, got_label = augment.flip_pair(image, label)
    np.testing.assert_array_equal(got_image.numpy(), image[:, ::-1])
    np.testing.assert_array_equal(got_label.numpy(), label[:, ::-1])


def test_pad_pair_pads_bottom_right_only_where_short():
    image = np.ones([3, 5, 3], np.float32)
    label = np.full([3, 5], 7, np.uint8)
    got_image, got_label = augment.pad_pair(image, label, (4, 4), label_fill=255)
    assert got_image.shape == (4, 5, 3) and got_label.shape == (4, 5)
    np.testing.assert_array_equal(got_image.numpy()[:3], image)
    np.testing.assert_array_equal(got_image.numpy()[3], 0)
    np.testing.assert_array_equal(got_label.numpy()[:3], label)
    np.testing.assert_array_equal(got_label.numpy()[3], 255)


def test_crop_pair_is_static_shaped_slice():
    image = np.random.default_rng(1).random([6, 7, 3]).astype(np.float32)
    masks = np.arange(6 * 7 * 2, dtype=np.int32).reshape(6, 7, 2)

    @tf.function(input_signature=[tf.TensorSpec([2], tf.int32)])
    def crop(offset):
        got_image, got_masks = augment.crop_pair(tf.constant(image), tf.constant(masks), offset, (3, 4))
        assert got_image.shape == (3, 4, 3) and got_masks.shape == (3, 4, 2)
        return got_image, got_masks

    got_image, got_masks = crop(tf.constant([2, 3]))
    np.testing.assert_array_equal(got_image.numpy(), image[2:5, 3:7])
    np.testing.assert_array_equal(got_masks.numpy(), masks[2:5, 3:7])


def _run(image, label, seeds, **kwargs):
    fn = tf.function(lambda seed: augment.random_scale_flip_crop(image, label, seed, **kwargs))
    return [tuple(t.numpy() for t in fn(tf.constant([s, 0], tf.int64))) for s in seeds]


def test_random_scale_flip_crop_keeps_image_and_label_aligned():
    # Vertical stripes of unequal width: a flip or crop applied to one side
    # only would put image values over the wrong label.
    widths = [5, 11, 7, 9, 16]
    label = np.repeat(np.arange(len(widths), dtype=np.uint8), widths)[None].repeat(24, axis=0)
    image = np.repeat((label.astype(np.float32) * 10 + 3)[..., None], 3, axis=-1)
    results = _run(image, label, range(40), crop_size=(32, 40), scale_range=(0.5, 2.0), label_fill=255)
    matched = total = 0
    for got_image, got_label in results:
        assert got_image.shape == (32, 40, 3) and got_label.shape == (32, 40)
        padding = got_label == 255
        np.testing.assert_array_equal(got_image[padding], 0)
        valid = ~padding
        expected = got_label[valid].astype(np.float64) * 10 + 3
        matched += np.sum(np.abs(got_image[valid][:, 0] - expected) < 1e-3)
        total += valid.sum()
    # Only pixels on a stripe border may differ (bilinear blend vs nearest pick).
    assert matched / total > 0.85


def test_random_scale_flip_crop_draws_every_offset_flip_and_scale():
    # Scale fixed at 1: an 8x8 grid of unique ids reveals the crop offset and flip.
    ids = np.arange(64, dtype=np.uint8).reshape(8, 8)
    image = np.zeros([8, 8, 3], np.float32)
    offsets, flips = set(), 0
    for _, got in _run(image, ids, range(400), crop_size=(4, 4), scale_range=(1.0, 1.0), label_fill=255):
        if got[0, 0] > got[0, 1]:  # ids grow left to right unless mirrored
            got = got[:, ::-1]
            flips += 1
        y, x = divmod(int(got[0, 0]), 8)
        np.testing.assert_array_equal(got, ids[y:y + 4, x:x + 4])
        offsets.add((y, x))
    assert offsets == {(y, x) for y in range(5) for x in range(5)}
    assert 150 < flips < 250

    # Crop larger than any scaled image: the unpadded extent is round(20 * s).
    sides = []
    for _, got in _run(np.zeros([20, 20, 3], np.float32), np.zeros([20, 20], np.uint8), range(300),
                       crop_size=(40, 40), scale_range=(0.5, 2.0), label_fill=255):
        sides.append(int(np.sum(got[:, 0] != 255)))
    assert 10 <= min(sides) <= 12 and 38 <= max(sides) <= 40


def test_random_scale_flip_crop_is_reproducible_from_its_seed():
    rng = np.random.default_rng(2)
    image = rng.random([16, 20, 3]).astype(np.float32)
    label = rng.integers(0, 19, [16, 20]).astype(np.uint8)
    kwargs = dict(crop_size=(12, 12), scale_range=(0.5, 2.0), label_fill=255)
    first, again, other = _run(image, label, [5, 5, 6], **kwargs)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])

"""Rotation, blur and the pipeline options of the Cityscapes training input.

References: NumPy float64 (half-pixel bilinear/nearest resize, OpenCV's 5x5
Gaussian taps with reflect-101 borders), least-squares fits of the geometry
recovered from coordinate-coded images, and the official label table
(cityscapesscripts.helpers.labels).
"""
import numpy as np
import pytest
import tensorflow as tf
from cityscapesscripts.helpers import labels as official

from data import cityscapes
from data.cityscapes import augment

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255
TRAINED_IDS = [l.id for l in official.labels if 0 <= l.trainId < 255]


def _geometry(image, label, seeds, **kwargs):
    fn = tf.function(lambda seed: augment.random_scale_flip_crop(image, label, seed, **kwargs))
    return [tuple(t.numpy() for t in fn(tf.constant([s, 0], tf.int64))) for s in seeds]


def _elements(images, labels):
    return tf.data.Dataset.from_tensor_slices({
        "id": [f"aachen_{i:06d}_000019" for i in range(len(images))],
        "image": np.stack(images), "label": np.stack(labels)})


def _batches(dataset):
    return [(image.numpy(), label.numpy()) for image, label in dataset]


# --- rotation ------------------------------------------------------------------

def test_rotation_moves_image_and_label_together_and_fills_what_turns_in():
    # The image holds each pixel's own (row, col): bilinear resampling of a linear
    # function returns the exact source position, so the image reveals the affine
    # map and the label (a unique id per pixel, nearest) must point to the same pixel.
    height, width = 24, 32
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.float32)
    label = (rows * width + cols + 1).astype(np.int32)
    # Scales >= 0.9 keep the scaled image larger than the crop: nothing is padding.
    results = _geometry(image, label, range(60), crop_size=(20, 28), scale_range=(0.9, 1.2),
                        label_fill=-1, rotation_degrees=10.0, image_fill=-100.0)
    angles = []
    out_rows, out_cols = np.mgrid[0:20, 0:28]
    for got_image, got_label in results:
        filled = got_label == -1
        np.testing.assert_array_equal(got_image[..., 2] == -100, filled)  # filled together
        source_row, source_col = np.divmod(got_label[~filled] - 1, width)
        # Nearest label pixel = the image's source position rounded (clamped at the edges).
        assert np.abs(got_image[~filled][:, 0] - source_row).max() <= 0.5 + 1e-3
        assert np.abs(got_image[~filled][:, 1] - source_col).max() <= 0.5 + 1e-3

        # Fit source = A @ (col, row, 1) on pixels away from the clamped edges.
        interior = ~filled & (got_image[..., 0] > 1) & (got_image[..., 0] < height - 2) \
            & (got_image[..., 1] > 1) & (got_image[..., 1] < width - 2)
        design = np.stack([out_cols[interior], out_rows[interior], np.ones(interior.sum())], axis=1)
        target = got_image[interior][:, [1, 0]].astype(np.float64)
        fit, *_ = np.linalg.lstsq(design, target, rcond=None)
        np.testing.assert_allclose(design @ fit, target, atol=2e-3)  # one affine map
        linear = fit[:2].T  # [[dx/dcol, dx/drow], [dy/dcol, dy/drow]]
        singular = np.linalg.svd(linear, compute_uv=False)
        # Rotation + uniform scale (+ mirror); rounding each side to whole pixels
        # changes the two scales by up to 0.5 / 21 pixels each.
        assert singular.max() / singular.min() < 1.05
        angles.append(np.degrees(np.arctan2(linear[0, 1], linear[1, 1])))  # tilt of the row axis

        # What the map sends outside the source is filled; what it sends inside is not.
        source = np.stack([out_cols, out_rows, np.ones_like(out_rows)], axis=-1) @ fit
        outside = (source[..., 0] < -1) | (source[..., 0] > width) | (source[..., 1] < -1) | (source[..., 1] > height)
        inside = (source[..., 0] > 0) & (source[..., 0] < width - 1) \
            & (source[..., 1] > 0) & (source[..., 1] < height - 1)
        assert filled[outside].all() and not filled[inside].any()
    angles = np.abs(angles)
    # Unequal whole-pixel scales of the two sides tilt the measured angle by up to 5%.
    assert angles.max() <= 10.5 and angles.max() > 7
    assert 0.25 < np.mean(angles > 0.05) < 0.75  # half of the images are rotated


def test_rotation_zero_reproduces_resize_flip_pad_crop():
    # Old recipe, pipeline level: normalize, resize x1.5, mirror, pad, crop, against NumPy.
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (10, 14, 3)).astype(np.uint8)
    label_ids = rng.choice(TRAINED_IDS + [0, 4], size=(10, 14)).astype(np.uint8)
    crop = (16, 16)  # taller than the 15-row scaled image: one row of padding
    dataset = cityscapes.train_pipeline(_elements([image] * 12, [label_ids] * 12), batch_size=1, crop_size=crop,
                                        scale_range=(1.5, 1.5), seed=4, rotation_degrees=0, blur_prob=0)

    ref_image = _bilinear(((image - IMAGENET_MEAN) / IMAGENET_STD), 15, 21)
    to_train = np.vectorize(lambda i: official.id2label[int(i)].trainId
                            if 0 <= official.id2label[int(i)].trainId < 255 else 255)
    ref_label = _nearest(to_train(label_ids), 15, 21)
    candidates = []
    for flip in (False, True):
        im, lab = (ref_image[:, ::-1], ref_label[:, ::-1]) if flip else (ref_image, ref_label)
        im = np.pad(im, [(0, 1), (0, 0), (0, 0)])
        lab = np.pad(lab, [(0, 1), (0, 0)], constant_values=255)
        candidates += [(im[:, x:x + 16], lab[:, x:x + 16], flip, x) for x in range(21 - 16 + 1)]
    seen = set()
    for got_image, got_label in _batches(dataset):
        errors = [np.abs(got_image[0] - c[0]).max() for c in candidates]
        best = candidates[int(np.argmin(errors))]
        assert min(errors) < 1e-4
        np.testing.assert_array_equal(got_label[0], best[1])
        seen.add((best[2], best[3]))
    assert len({flip for flip, _ in seen}) == 2 and len(seen) >= 5


def _bilinear(image, out_h, out_w):
    """Half-pixel-centre bilinear resize with clamped edges, float64 [H, W, C]."""
    def taps(out_size, in_size):
        src = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
        low = np.floor(src)
        return (np.clip(low, 0, in_size - 1).astype(int), np.clip(low + 1, 0, in_size - 1).astype(int),
                src - low)

    y0, y1, fy = taps(out_h, image.shape[0])
    x0, x1, fx = taps(out_w, image.shape[1])
    fx = fx[None, :, None]
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def _nearest(label, out_h, out_w):
    ys = np.floor((np.arange(out_h) + 0.5) * label.shape[0] / out_h).astype(int)
    xs = np.floor((np.arange(out_w) + 0.5) * label.shape[1] / out_w).astype(int)
    return label[ys][:, xs]


def _painted_scene(size, block, seed):
    """Square blocks of trained classes, each painted in its official colour."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(TRAINED_IDS, size=(size[0] // block, size[1] // block))
    label = np.kron(ids, np.ones((block, block), np.int64)).astype(np.uint8)
    colors = np.zeros((256, 3), np.uint8)
    for l in official.labels:
        if l.id >= 0:
            colors[l.id] = l.color
    return colors[label], label


def test_train_pipeline_with_rotation_keeps_colours_on_their_classes():
    scenes = [_painted_scene((64, 96), 16, seed) for seed in range(4)]
    dataset = cityscapes.train_pipeline(_elements(*zip(*scenes)), batch_size=2, crop_size=(48, 48), seed=1,
                                        rotation_degrees=10, blur_prob=0)
    palette = np.array([official.trainId2label[t].color for t in range(19)] + [(0, 0, 0)], np.float64)
    matched = total = 0
    for _ in range(3):
        for images, labels in _batches(dataset):
            for image, label in zip(images, labels):
                rgb = image * IMAGENET_STD + IMAGENET_MEAN
                padded = np.pad(label, 1, mode="edge")
                # Non-border: all 8 neighbours share the class, and it is not the fill.
                same = np.all([padded[1 + dy:1 + dy + 48, 1 + dx:1 + dx + 48] == label
                               for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
                keep = same & (label != 255)
                close = np.all(np.abs(rgb - palette[np.minimum(label, 19)]) < 0.5, axis=-1)
                matched += np.sum(close & keep)
                total += keep.sum()
    assert total > 5000 and matched / total > 0.95


# --- blur ----------------------------------------------------------------------

def _reference_blur(image):
    """OpenCV GaussianBlur(5x5, sigma 0): taps [1, 4, 6, 4, 1] / 16, BORDER_REFLECT_101; float64."""
    taps = np.array([1, 4, 6, 4, 1], np.float64) / 16
    padded = np.pad(image.astype(np.float64), [(2, 2), (2, 2), (0, 0)], mode="reflect")
    h, w = image.shape[:2]
    columns = sum(taps[k] * padded[k:k + h] for k in range(5))
    return sum(taps[k] * columns[:, k:k + w] for k in range(5))


def test_blur_changes_only_the_image_by_the_opencv_kernel():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40, 56, 3)).astype(np.uint8) for _ in range(4)]
    labels = [rng.choice(TRAINED_IDS, size=(40, 56)).astype(np.uint8) for _ in range(4)]

    def run(blur_prob):
        return _batches(cityscapes.train_pipeline(_elements(images, labels), batch_size=2, crop_size=(24, 32),
                                                  seed=5, blur_prob=blur_prob))

    for (sharp, sharp_label), (blurred, blurred_label) in zip(run(0.0), run(1.0)):
        np.testing.assert_array_equal(blurred_label, sharp_label)
        for one_sharp, one_blurred in zip(sharp, blurred):
            # Normalization is per-channel affine and the taps sum to 1: blurring commutes with it.
            np.testing.assert_allclose(one_blurred, _reference_blur(one_sharp), atol=1e-4)
            assert np.abs(one_blurred - one_sharp).max() > 0.1


def test_blur_probability():
    image = tf.constant(np.random.default_rng(2).random((8, 8, 3)), tf.float32)
    blur = tf.function(lambda seed: augment.random_gaussian_blur(image, seed, prob=0.5))
    changed = [not np.array_equal(blur(tf.constant([s, 1], tf.int64)).numpy(), image.numpy()) for s in range(200)]
    assert 70 < sum(changed) < 130
    assert augment.random_gaussian_blur(image, tf.constant([0, 0], tf.int64), prob=0) is image


# --- options -------------------------------------------------------------------

def test_defaults_are_reproducible_and_parallelism_does_not_change_the_draws():
    scenes = [_painted_scene((32, 48), 8, seed) for seed in range(4)]

    def run(**kwargs):
        return _batches(cityscapes.train_pipeline(_elements(*zip(*scenes)), batch_size=2, crop_size=(24, 24),
                                                  seed=9, **kwargs))

    first = run()
    for other in (run(), run(num_parallel_calls=1), run(deterministic=True)):
        for (a_image, a_label), (b_image, b_label) in zip(first, other):
            np.testing.assert_array_equal(a_image, b_image)
            np.testing.assert_array_equal(a_label, b_label)
    # Unordered delivery: the same crops, maybe in another order.
    unordered = run(deterministic=False)
    assert sorted(l.tobytes() for _, ls in unordered for l in ls) == sorted(l.tobytes() for _, ls in first for l in ls)
    different = _batches(cityscapes.train_pipeline(_elements(*zip(*scenes)), batch_size=2, crop_size=(24, 24),
                                                   seed=10))
    assert not np.array_equal(first[0][1], different[0][1])


def test_cache_decodes_once_and_shuffle_buffer_reshuffles_the_cache():
    calls = []

    def generate():
        calls.append(1)
        for k in range(4):
            yield {"id": str(k), "image": np.full((8, 8, 3), 10 * k, np.uint8), "label": np.full((8, 8), 7, np.uint8)}

    elements = tf.data.Dataset.from_generator(generate, output_signature={
        "id": tf.TensorSpec([], tf.string), "image": tf.TensorSpec([8, 8, 3], tf.uint8),
        "label": tf.TensorSpec([8, 8], tf.uint8)})

    def order(dataset):
        # The flat images identify the elements: red channel 10 * k before normalization.
        return [int(round(i[0, 0, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0])) // 10 for i, _ in _batches(dataset)]

    plain = dict(batch_size=1, crop_size=(8, 8), scale_range=(1.0, 1.0), rotation_degrees=0, blur_prob=0, seed=0)
    cached = cityscapes.train_pipeline(elements, cache=True, **plain)
    assert order(cached) == order(cached) == [0, 1, 2, 3] and len(calls) == 1

    shuffled = cityscapes.train_pipeline(elements, cache=True, shuffle_buffer=4, **plain)
    orders = [order(shuffled) for _ in range(4)]
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders) and len({tuple(o) for o in orders}) > 1
    assert len(calls) == 2  # the second pipeline's own cache, filled once


@pytest.mark.parametrize("bad, message", [
    (dict(blur_prob=1.5), "blur_prob must lie in"),
    (dict(rotation_degrees=-1), "rotation_degrees must be >= 0"),
    (dict(scale_range=(0.0, 1.0)), "scale_range must satisfy"),
])
def test_bad_options_are_one_line_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        cityscapes.train_pipeline(_elements([np.zeros((8, 8, 3), np.uint8)], [np.zeros((8, 8), np.uint8)]),
                                  batch_size=1, **bad)

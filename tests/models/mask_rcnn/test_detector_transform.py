"""The detector's input transform (models.mask_rcnn.transform) and the resize rule (data.coco.resized_size)
against torchvision's GeneralizedRCNNTransform itself, on batches of differently sized images.

Reference: torchvision 0.29's GeneralizedRCNNTransform in eval mode (resize by
its scale rule, F.interpolate bilinear, normalise on 0..1, zero-pad to /32).
"""
import numpy as np
import pytest
import tensorflow as tf
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from data.coco import resized_size
from models.mask_rcnn.transform import detector_inputs, preprocess, resize_normalize_pad

# (height, width): COCO's usual 480x640 (800 / 480 in float32 times 480 is 799.99998: floor 799, torchvision 800),
# 100x298 (1333 / 298 * 298 is 1332.99999... in float64 but 1333 in a float32 product: torchvision 1332),
# 100x271 (the other way: 1333 in float64, 1332 in float32), extreme aspects, already-800 sizes, tiny ones.
AWKWARD_SIZES = [(480, 640), (100, 298), (100, 271), (3, 5), (1, 11), (7, 2000), (600, 512), (427, 640),
                 (800, 1333), (1333, 800), (2000, 3000), (96, 128)]


def _torchvision(images, min_size, max_size):
    """torchvision's transform of uint8 [h, w, 3] images: (images [B, H, W, 3] float32, image_sizes [B, 2])."""
    transform = GeneralizedRCNNTransform(min_size, max_size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).eval()
    with torch.no_grad():
        batch, _ = transform([torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255.0 for image in images])
    return batch.tensors.permute(0, 2, 3, 1).numpy(), np.array(batch.image_sizes, np.int32)


def _torchvision_sizes(sizes, min_size, max_size):
    transform = GeneralizedRCNNTransform(min_size, max_size, [0.0] * 3, [1.0] * 3).eval()
    with torch.no_grad():
        batch, _ = transform([torch.zeros(1, h, w) for h, w in sizes])
    return [tuple(s) for s in batch.image_sizes]


@pytest.mark.parametrize("min_size, max_size", [(800, 1333), (120, 1000), (333, 555)])
def test_resized_size_is_torchvisions_rule(min_size, max_size):
    expected = _torchvision_sizes(AWKWARD_SIZES, min_size, max_size)
    heights, widths = resized_size([h for h, _ in AWKWARD_SIZES], [w for _, w in AWKWARD_SIZES], min_size, max_size)
    assert list(zip(heights.numpy().tolist(), widths.numpy().tolist())) == expected
    # Python ints in, one size out, in a graph as in tf.data.
    graph = tf.function(lambda h, w: resized_size(h, w, min_size, max_size))
    assert [tuple(int(v) for v in graph(tf.constant(h), tf.constant(w))) for h, w in AWKWARD_SIZES] == expected


def test_resized_size_edge_cases_are_torchvisions():
    # The cases named in AWKWARD_SIZES, spelled out: they are where a float32 scale or product goes wrong.
    sizes = [tuple(int(v) for v in resized_size(h, w)) for h, w in [(480, 640), (100, 298), (100, 271)]]
    assert sizes == [(800, 1066), (447, 1332), (491, 1333)]
    assert sizes == _torchvision_sizes([(480, 640), (100, 298), (100, 271)], 800, 1333)


def _images(rng, sizes):
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]


def _padded_batch(images):
    """What tf.data's padded_batch makes of them: zeros at the bottom and right to the largest."""
    height, width = max(i.shape[0] for i in images), max(i.shape[1] for i in images)
    # Non-zero filler would show if the transform read beyond an image: padded_batch's zeros hide nothing else.
    out = np.full((len(images), height, width, 3), 255, np.uint8)
    for b, image in enumerate(images):
        out[b, :image.shape[0], :image.shape[1]] = image
    return out


# 5e-5 normalised = 0.003 grey levels: torchvision divides by 255 before resizing, we normalise after, and the
# two compute float32 sampling coordinates in their own ways (measured 1.6e-5 on these small noise images;
# on noise at 800x1333, where a coordinate's float32 step is 6e-5 px, 1.3e-4).
ATOL = 5e-5


def test_resize_normalize_pad_in_a_graph_equals_torchvision_on_a_mixed_batch():
    rng = np.random.default_rng(0)
    min_size, max_size = 64, 100
    sizes = [(48, 64), (70, 33), (37, 52), (64, 64)]  # up- and down-scaled, portrait and landscape
    images = _images(rng, sizes)
    expected, expected_sizes = _torchvision(images, min_size, max_size)
    batch = {"image": _padded_batch(images), "original_size": np.array(sizes, np.int32),
             "image_size": np.array(expected_sizes, np.int32)}
    signature = {"image": tf.TensorSpec([None, None, None, 3], tf.uint8),
                 "original_size": tf.TensorSpec([None, 2], tf.int32), "image_size": tf.TensorSpec([None, 2], tf.int32)}
    ours = tf.function(detector_inputs, input_signature=[signature])(batch)  # dynamic shapes, as in training
    assert ours["images"].shape == expected.shape and expected.shape[1] % 32 == 0 and expected.shape[2] % 32 == 0
    np.testing.assert_allclose(ours["images"].numpy(), expected, atol=ATOL, rtol=1e-5)
    np.testing.assert_array_equal(ours["image_sizes"], expected_sizes)


def test_preprocess_equals_torchvision_and_the_batch_function():
    rng = np.random.default_rng(1)
    images = _images(rng, [(30, 40), (41, 23)])
    expected, expected_sizes = _torchvision(images, 48, 80)
    ours = preprocess(images, min_size=48, max_size=80)
    np.testing.assert_allclose(ours["images"].numpy(), expected, atol=ATOL, rtol=1e-5)
    np.testing.assert_array_equal(ours["image_sizes"], expected_sizes)
    np.testing.assert_array_equal(ours["original_sizes"], [(30, 40), (41, 23)])
    # float 0..255 input gives the same as uint8
    as_float = preprocess([image.astype(np.float32) for image in images], min_size=48, max_size=80)
    np.testing.assert_allclose(as_float["images"].numpy(), ours["images"].numpy(), atol=1e-6)
    single = resize_normalize_pad(_padded_batch(images)[1:], [[41, 23]], ours["image_sizes"][1:])
    np.testing.assert_allclose(single.numpy()[0], expected[1, :single.shape[1], :single.shape[2]], atol=ATOL)

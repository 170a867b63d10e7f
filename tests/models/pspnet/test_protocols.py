"""The sources' test protocols (models.pspnet.protocols) against their code transcribed step by step in
protocol_references.py, running the same Keras network for the forward pass, on a real photo at sizes
that exercise each branch: smaller than the window, exactly one window, several windows, several scales.

The protocols run the model in a Grappler-optimised graph and resize in float32; the references call the
model eagerly and resize in float64, so scores agree to float32 precision, not bitwise.
"""
import keras
import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from models import build_pspnet
from models.pspnet import inference_model
from models.pspnet.protocols import (MMSEG_CITYSCAPES, mmseg_predict, mmseg_rescaled_size, opencv_resize,
                                     semseg_predict, semseg_scaled_size)
from protocol_references import cv2_linear, cv2_linear_uint8, mmseg_test, semseg_test

NUM_CLASSES = 5


def _model(layout):
    """A tiny PSPNet of the layout; its classifier scaled down so that the softmax does not saturate (a
    flipped view or a neighbouring window then still changes the probabilities)."""
    keras.utils.set_random_seed(1)
    model = build_pspnet(NUM_CLASSES, "resnet50", aux=True, base_width=4, layout=layout)
    layer = model.get_layer("head_classifier")
    layer.set_weights([w * 0.05 for w in layer.get_weights()])
    return inference_model(model)


@pytest.fixture(scope="module")
def models():
    return {layout: _model(layout) for layout in ("semseg", "mmseg", "mmseg_769x769")}


@pytest.fixture(scope="module")
def photo():
    """grace_hopper.jpg (600 x 512) averaged over 8 x 8 blocks: a 75 x 64 real photo."""
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        image = np.asarray(Image.open(f).convert("RGB"), np.float64)
    return np.round(image.reshape(75, 8, 64, 8, 3).mean(axis=(1, 3))).astype(np.uint8)


def _forward(model):
    return lambda x: model(x, training=False).numpy()


def _check(scores, labels, ref_scores, ref_labels, atol=2e-5):
    assert scores.shape == ref_scores.shape and labels.shape == ref_labels.shape
    assert scores.dtype == np.float32 and labels.dtype == np.int32
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=atol)
    assert np.mean(labels == ref_labels) >= 0.999
    # The test can tell: the labels are not one class everywhere.
    assert len(np.unique(ref_labels)) > 1


# ---- sizes, against hand-computed values --------------------------------------------------------------

def test_semseg_scaled_size_is_the_long_side_with_python_round():
    assert semseg_scaled_size(1024, 2048, 1.0, 2048) == (1024, 2048)
    assert semseg_scaled_size(1024, 2048, 0.75, 2048) == (768, 1536)
    assert semseg_scaled_size(4, 1, 1.0, 10) == (10, 2)  # 10 / 4 * 1 = 2.5 rounds to even
    assert semseg_scaled_size(1, 4, 1.0, 14) == (4, 14)  # 3.5 -> 4


def test_mmseg_rescaled_size_is_mmcv_imrescale():
    assert mmseg_rescaled_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert mmseg_rescaled_size(1024, 2048, (2049, 1025)) == (1025, 2049)  # the 769x769 configs
    assert mmseg_rescaled_size(1024, 2048, (int(2048 * 0.75), int(1024 * 0.75))) == (768, 1536)
    assert mmseg_rescaled_size(600, 512, (2048, 1024)) == (1200, 1024)  # the short side limits: factor 2
    assert mmseg_rescaled_size(600, 512, (1000, 500)) == (586, 500)  # factor 500 / 512: 585.94 + 0.5


# ---- OpenCV's resize ----------------------------------------------------------------------------------

RESIZES = [((45, 61), (48, 65)), ((40, 57), (24, 34)), ((100, 37), (150, 55)), ((20, 27), (20, 27)),
           ((64, 64), (32, 32)), ((7, 5), (3, 2)), ((1, 9), (4, 17))]


@pytest.mark.parametrize("source, target", RESIZES)
def test_opencv_resize_is_cv2_inter_linear(photo, source, target):
    image = photo[:source[0], :source[1]]
    exact = opencv_resize(image[None], target, uint8=True)
    assert exact.dtype == np.uint8
    np.testing.assert_array_equal(exact.numpy()[0], cv2_linear_uint8(image, target[1], target[0]))
    floats = opencv_resize(image[None].astype(np.float32), target).numpy()[0]
    np.testing.assert_allclose(floats, cv2_linear(image, target[1], target[0]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("source, target", RESIZES + [((1024, 2048), (1025, 2049))])
def test_the_fixed_point_reference_is_opencv(source, target):
    cv2 = pytest.importorskip("cv2", reason="OpenCV is no dependency; this checks the reference where it is installed")
    image = np.random.default_rng(0).integers(0, 256, source + (3,), dtype=np.uint8)
    np.testing.assert_array_equal(cv2_linear_uint8(image, target[1], target[0]),
                                  cv2.resize(image, target[::-1], interpolation=cv2.INTER_LINEAR))


# ---- semseg ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "size, base_size, scales, crop",
    [
        ((20, 27), 24, (1.0,), 33),  # scaled to 18 x 24: padded around the centre in both axes, one window
        ((31, 40), 33, (1.0,), 33),  # 26 x 33: one window exactly as wide as the image, padded in height
        # 71 x 96: 4 x 6 windows every ceil(25 * 2/3) = 17 pixels, the last ones moved back to the edge
        ((45, 61), 96, (1.0,), 25),
        # several scales: long sides round(55.5) = 56, 74 and round(92.5) = 92; the smallest padded
        ((45, 61), 74, (0.75, 1.0, 1.25), 33),
    ],
)
def test_semseg_protocol_is_tool_test_py(models, photo, size, base_size, scales, crop):
    image = photo[:size[0], -size[1]:]
    model = models["semseg"]
    scores, labels = semseg_predict(model, image, crop=crop, base_size=base_size, scales=scales, window_batch=5)
    ref_scores, ref_labels = semseg_test(_forward(model), image, NUM_CLASSES, base_size, crop, scales)
    _check(scores, labels, ref_scores, ref_labels)


def test_semseg_averages_each_window_with_its_mirror_image(models, photo):
    """The flip is always on in semseg's protocol: with one window covering the image, the mirrored photo
    gives exactly the mirrored scores (without the flip it would not: the network is not symmetric)."""
    image = photo[:33, :33]
    scores, _ = semseg_predict(models["semseg"], image, crop=33, base_size=33)
    mirrored, _ = semseg_predict(models["semseg"], np.ascontiguousarray(image[:, ::-1]), crop=33, base_size=33)
    np.testing.assert_allclose(mirrored, scores[:, ::-1], rtol=0, atol=1e-6)


# ---- mmseg ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "layout, size, test_cfg, img_scale, ratios, flip",
    [
        ("mmseg", (45, 61), dict(mode="whole"), (96, 48), (1.0,), False),  # upscaled to 48 x 65, whole
        ("mmseg", (40, 57), dict(mode="whole"), (64, 32), (0.75, 1.0, 1.5), True),  # downscaled too, flipped
        # smaller than the window in both axes: one window, the whole image, no padding
        ("mmseg_769x769", (20, 27), dict(mode="slide", crop_size=(25, 33), stride=(17, 21)), (27, 20), (1.0,), False),
        # exactly one window
        ("mmseg_769x769", (25, 33), dict(mode="slide", crop_size=(25, 33), stride=(17, 21)), (33, 25), (1.0,), False),
        # several windows, clamped at the edge, and a window taller than the image at ratio 0.5
        ("mmseg_769x769", (45, 61), dict(mode="slide", crop_size=(25, 33), stride=(17, 21)), (61, 45),
         (0.5, 1.0, 1.25), True),
        ("mmseg", (44, 37), dict(mode="slide", crop_size=(25, 33), stride=(17, 21)), (61, 45), (1.0,), True),
    ],
)
def test_mmseg_protocol_is_encoder_decoder_aug_test(models, photo, layout, size, test_cfg, img_scale, ratios, flip):
    image = photo[-size[0]:, :size[1]]
    model = models[layout]
    options = dict(mode=test_cfg["mode"], test_scale=img_scale, ratios=ratios, flip=flip, window_batch=3)
    if test_cfg["mode"] == "slide":
        options.update(crop=test_cfg["crop_size"], stride=test_cfg["stride"])
    scores, labels = mmseg_predict(model, image, **options)
    ref_scores, ref_labels = mmseg_test(_forward(model), image, test_cfg, img_scale, ratios, flip,
                                        align_corners=layout == "mmseg_769x769")
    _check(scores, labels, ref_scores, ref_labels)


def test_mmseg_reads_align_corners_from_the_model(models, photo):
    """The two layouts' rescale differs: passing the other align_corners changes the scores."""
    image = photo[:20, :27]
    options = dict(mode="whole", test_scale=(40, 30))  # run at 30 x 40, the logits resized back to 20 x 27
    own, _ = mmseg_predict(models["mmseg_769x769"], image, **options)
    explicit, _ = mmseg_predict(models["mmseg_769x769"], image, align_corners=True, **options)
    other, _ = mmseg_predict(models["mmseg_769x769"], image, align_corners=False, **options)
    np.testing.assert_array_equal(own, explicit)
    assert np.abs(own - other).max() > 1e-4


def test_mmseg_cityscapes_settings_are_the_configs():
    assert MMSEG_CITYSCAPES["mmseg"] == dict(mode="whole", test_scale=(2048, 1024))
    assert MMSEG_CITYSCAPES["mmseg_769x769"] == dict(mode="slide", test_scale=(2049, 1025), crop=(769, 769),
                                                      stride=(513, 513))


# ---- input errors --------------------------------------------------------------------------------------

def test_bad_inputs_raise_one_clear_error(models):
    with pytest.raises(ValueError, match="uint8 RGB image"):
        semseg_predict(models["semseg"], np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB image"):
        mmseg_predict(models["mmseg"], np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="mode"):
        mmseg_predict(models["mmseg"], np.zeros((8, 8, 3), np.uint8), mode="sliding")
    with pytest.raises(ValueError, match="align_corners"):
        mmseg_predict(lambda x: x, np.zeros((8, 8, 3), np.uint8))

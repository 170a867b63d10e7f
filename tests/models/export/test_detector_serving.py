"""DetectorServing (models/export/mask_rcnn.py) and the portable NMS, against the project's own predict path.

References: tf.image.combined_non_max_suppression (the training / evaluation NMS),
models.mask_rcnn.paste.paste_masks (torchvision_compatible, the NumPy paste
predict.py uses) and models.mask_rcnn.transform.detect (predict.py's detector
call); the exports (Keras -> tf2onnx -> onnxruntime, OpenVINO from that ONNX
file, LiteRT at a fixed size) against the Keras serving graph.
"""
import numpy as np
import pytest
import tensorflow as tf

from models.export.mask_rcnn import DetectorServing, paste_masks_dense
from models.mask_rcnn.detector import build_mask_rcnn
from models.mask_rcnn.nms import grouped_nms, portable_nms
from models.mask_rcnn.paste import paste_masks
from models.mask_rcnn.transform import detect

SIDES = {"short_side": 320, "long_side": 480}
CROPS = ((333, 457), (411, 297))


@pytest.mark.parametrize("shared_boxes", [True, False])
def test_portable_nms_selects_as_combined_nms(shared_boxes):
    rng = np.random.default_rng(int(shared_boxes))
    traced = {}
    for trial in range(12):
        count, groups, keep = int(rng.integers(1, 250)), int(rng.integers(1, 7)), int(rng.integers(1, 50))
        corner = rng.uniform(-20, 300, (2, count, 1 if shared_boxes else groups, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(0.5, 80, corner.shape)], -1).astype(np.float32)
        scores = rng.uniform(-0.3, 1, (2, count, groups)).astype(np.float32)  # distinct: no ties to order
        settings = {"max_output_size": keep, "iou_threshold": 0.5, "score_threshold": 0.1}
        expected = grouped_nms(boxes, scores, **settings)
        if keep not in traced:
            def portable(b, s, settings=settings):
                with portable_nms():
                    return grouped_nms(b, s, **settings)
            traced[keep] = tf.function(portable)
        got = traced[keep](boxes, scores)
        for name, want, have in zip(("boxes", "scores", "groups", "valid"), expected, got):
            np.testing.assert_array_equal(have.numpy(), want.numpy(), err_msg=f"trial {trial}: {name}")
    assert not grouped_nms(boxes, scores, **settings)[0].dtype.is_integer  # the default path is still combined


def _random_paste_case(rng, count, height, width):
    """Masks [count, 28, 28] (some with 0.5 plateaus) and boxes [count, 4] (y1, x1, y2, x2): inside, partly
    outside, tiny, empty (zero width or height) and inverted."""
    masks = rng.random((count, 28, 28)).astype(np.float32)
    masks[::4] = np.where(masks[::4] < 0.4, np.float32(0.5), masks[::4])
    y1x1 = rng.uniform(-0.3, 1.1, (count, 2)) * [height, width]
    size = np.exp(rng.uniform(np.log(0.2), np.log(1.5), (count, 2))) * [height, width] * rng.uniform(0, 1, (count, 1))
    boxes = np.concatenate([y1x1, y1x1 + size], 1)
    boxes[0:3] = [[5, 5, 5, 9], [3, 4, 8, 4], [7, 7, 7, 7]]  # empty boxes
    boxes[3] = [10, 12, 4, 20]  # inverted
    boxes[4] = [2.2, 3.3, 2.9, 3.8]  # smaller than a pixel
    return masks, boxes.astype(np.float32)


def _torchvision_paste(masks, boxes, image_size):
    """torchvision's paste_masks_in_image (float probabilities [N, H, W]) of boxes (y1, x1, y2, x2), box by box:
    torchvision fails on a box whose window lies below or right of the image (a negative slice); those get NaN."""
    import torch
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    out = np.full((len(masks), *image_size), np.nan, np.float32)
    for k in range(len(masks)):
        try:
            out[k] = paste_masks_in_image(torch.from_numpy(masks[k:k + 1, None]),
                                          torch.from_numpy(boxes[k:k + 1, [1, 0, 3, 2]]), image_size, padding=1)[0, 0]
        except RuntimeError:
            pass
    return out


def test_paste_masks_dense_matches_torchvision_and_paste_masks():
    rng = np.random.default_rng(7)
    paste = tf.function(paste_masks_dense)
    differ_from_numpy, pixels = 0, 0
    for height, width in ((61, 83), (120, 45), (200, 200)):
        masks, boxes = _random_paste_case(rng, 60, height, width)
        got = paste(masks, boxes, (tf.constant(height), tf.constant(width)), 0.5).numpy()
        values = _torchvision_paste(masks, boxes, (height, width))
        outside = np.isnan(values[:, 0, 0])
        assert 0 < outside.sum() < len(boxes) // 3 and not got[outside].any()
        # Summed in another order than F.interpolate's: only a pixel within rounding of 0.5 may differ.
        differ = got[~outside] != (values[~outside] >= 0.5)
        assert np.all(np.abs(values[~outside][differ] - 0.5) < 1e-6) and differ.sum() <= 3
        numpy_paste = paste_masks(masks, boxes, (height, width), 0.5, torchvision_compatible=True).dense()
        differ = got != numpy_paste
        # paste_masks solves crossings in float64: it may differ only where torchvision's value is exactly 0.5.
        assert np.all(values[differ] == 0.5)
        differ_from_numpy += int(differ.sum())
        pixels += got.size
    assert differ_from_numpy <= 1e-5 * pixels, f"{differ_from_numpy} of {pixels} pixels differ from paste_masks"


def _tiny_detector():
    """The tiny detector with random weights, its class logits and box deltas scaled down: raw, its scores
    saturate at 1.0 (ties, whose order no NMS fixes) and its boxes at the image's edges."""
    import keras

    keras.utils.set_random_seed(0)
    detector = build_mask_rcnn(5, base_width=8, fpn_channels=8, mask_head_channels=8, box_head_units=16,
                               score_threshold=0.0, category_ids=(3, 7, 11, 12, 40), category_names="abcde")
    head = detector.get_layer("box_head")
    head.class_logits.kernel.assign(head.class_logits.kernel * 1e-2)
    head.box_deltas.kernel.assign(head.box_deltas.kernel * 1e-3)
    return detector


@pytest.fixture(scope="module")
def serving():
    return DetectorServing(_tiny_detector(), score_threshold=0.0, **SIDES)


@pytest.fixture(scope="module")
def photos():
    from matplotlib import cbook

    from data.images import read_image

    rgb = read_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return [np.ascontiguousarray(rgb[:h, :w]) for h, w in CROPS]


@pytest.fixture(scope="module")
def served(serving, photos):
    """The Keras serving graph (traced as an export traces it: any size) on each photo at score_threshold 0."""
    call = tf.function(serving.call, input_signature=serving.input_signature())
    return [{k: v.numpy() for k, v in call(photo, tf.constant(0.0)).items()} for photo in photos]


def test_serving_matches_detect(serving, photos, served):
    for photo, got in zip(photos, served):
        expected = detect(serving.detector, [photo], score_threshold=0.0, **dict(zip(("min_size", "max_size"),
                                                                                   SIDES.values())))[0]
        count = len(expected["scores"])
        assert got["num_detections"] == count > 50
        # detect's first graph is traced for its input's exact shape, the export's for any: the convolutions'
        # float32 sums may then differ in the last bits.
        np.testing.assert_allclose(got["boxes"], expected["boxes"][:, [1, 0, 3, 2]], atol=1e-4)
        np.testing.assert_array_equal(got["class_ids"], expected["category_ids"])
        np.testing.assert_allclose(got["scores"], expected["scores"], atol=1e-6)
        masks = expected["masks"].dense()
        assert masks.any() and (got["masks"] != masks).sum() <= 1e-6 * masks.size
        assert got["masks"].dtype == np.uint8 and got["masks"].shape == (count, *photo.shape[:2])


def test_score_threshold_keeps_a_prefix_and_batch_pads(serving, photos, served):
    threshold = float(np.median(served[0]["scores"]))
    got = {k: v.numpy() for k, v in serving(photos[0], tf.constant(threshold)).items()}
    kept = int(np.sum(served[0]["scores"] >= threshold))
    assert got["num_detections"] == kept and 0 < kept < len(served[0]["scores"])
    np.testing.assert_array_equal(got["class_ids"], served[0]["class_ids"][:kept])
    # A batch of two equal sizes: the second image flipped, so its count differs; padding is zeros.
    batch = np.stack([photos[0], photos[0][:, ::-1]])
    both = {k: v.numpy() for k, v in serving.call_batch(batch, tf.constant(0.3)).items()}
    for b in range(2):
        one = {k: v.numpy() for k, v in serving(batch[b], tf.constant(0.3)).items()}
        n = int(one["num_detections"])
        assert both["num_detections"][b] == n
        for name in ("boxes", "class_ids", "scores", "masks"):
            np.testing.assert_allclose(both[name][b, :n], one[name], atol=1e-4)
            assert not both[name][b, n:].any()


def test_metadata(serving):
    meta = serving.metadata()
    assert meta["family"] == "mask_rcnn" and meta["class_names"] == {3: "a", 7: "b", 11: "c", 12: "d", 40: "e"}
    assert (meta["short_side"], meta["long_side"], meta["score_threshold"], meta["mask_threshold"]) == (
        320, 480, 0.0, 0.5)
    assert set(meta["outputs"]) == {"boxes", "class_ids", "scores", "masks", "num_detections"}


@pytest.fixture(scope="module")
def onnx_path(serving, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("onnx") / "detector.onnx")
    serving.export(path, format="onnx", input_signature=serving.input_signature(), verbose=False)
    return path


def _compare(got, expected):
    assert got["num_detections"] == expected["num_detections"]
    # A random network amplifies float32 rounding (its features run to thousands): boxes agree to ~2e-3 px.
    np.testing.assert_allclose(got["boxes"], expected["boxes"], atol=5e-3)
    np.testing.assert_array_equal(got["class_ids"], expected["class_ids"])
    np.testing.assert_allclose(got["scores"], expected["scores"], atol=1e-5)
    assert np.mean(got["masks"] == expected["masks"]) >= 0.999


def test_onnx_export_runs_in_onnxruntime(onnx_path, photos, served):
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_path)
    names = [output.name for output in session.get_outputs()]
    for photo, expected in zip(photos, served):
        got = dict(zip(names, session.run(None, {"image": photo, "score_threshold": np.array(0.0, np.float32)})))
        _compare(got, expected)


def test_onnx_export_runs_in_openvino(onnx_path, photos, served):
    import openvino

    compiled = openvino.Core().compile_model(onnx_path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for photo, expected in zip(photos, served):
        results = compiled([photo, np.array(0.0, np.float32)])
        _compare({output.get_any_name(): results[output] for output in compiled.outputs}, expected)


def test_litert_builtins_at_a_fixed_size(serving, photos, served):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    photo = photos[0]
    function = tf.function(serving.call).get_concrete_function(*serving.input_signature(photo.shape[:2]))
    # No trackable object: the converter then freezes the weights (with one, they stay resource variables
    # that a plain Interpreter reads uninitialised).
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert(),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], photo if detail["name"] == "image" else np.array(0.0, np.float32))
    interpreter.invoke()
    # Outputs Identity, Identity_1, ...: the served dict's keys in sorted order.
    outputs = sorted(interpreter.get_output_details(), key=lambda d: int(d["name"].partition("_")[2] or 0))
    _compare(dict(zip(sorted(served[0]), (interpreter.get_tensor(d["index"]) for d in outputs))), served[0])

"""The converted torchvision Mask R-CNN (v1 and v2) against torchvision itself, stage by stage, on a real photo.

Reference: torchvision 0.29's maskrcnn_resnet50_fpn with randomised weights
(tests/models/mask_rcnn/torchvision_maskrcnn.py says how and why), its state dict
converted with models.convert.torchvision. The photo is
matplotlib's grace_hopper.jpg (600 x 512), run at min_size 400 / max_size 666
to keep the test short (the 800 / 1333 transform is checked on its own).
Where torchvision's stages feed each other, ours are fed torchvision's
tensors (its transformed image, its proposals), so each comparison checks one
stage and near-tied scores cannot reorder later ones.
"""
import keras
import numpy as np
import pytest
import torch

from models.convert import command as convert
from models.convert.torchvision import COCO_CATEGORIES
from models.mask_rcnn.detector import roi_heads_model, rpn_model
from models.mask_rcnn.paste import paste_masks
from models.mask_rcnn.transform import detect, preprocess
from tests.models.mask_rcnn.torchvision_maskrcnn import grace_hopper, randomised_maskrcnn, reference_outputs

MIN_SIZE, MAX_SIZE = 400, 666
SLOTS = [0] + [coco_id for coco_id, _ in COCO_CATEGORIES]  # torchvision's class slot of each Keras class
XY_SWAP = [1, 0, 3, 2]  # (dx, dy, dw, dh) <-> (dy, dx, dh, dw)


def _close(ours, reference, rtol=1e-4):
    """Elementwise within rtol, with an absolute floor of rtol times the reference's largest magnitude."""
    reference = np.asarray(reference)
    np.testing.assert_allclose(ours, reference, rtol=rtol, atol=rtol * float(np.abs(reference).max()))


@pytest.fixture(scope="module", params=["v1", pytest.param("v2", marks=pytest.mark.slow)])
def setup(request, tmp_path_factory):
    variant = request.param
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp(f"torchvision_maskrcnn_{variant}")
    image = grace_hopper()
    reference_model = randomised_maskrcnn(image, variant, min_size=MIN_SIZE, max_size=MAX_SIZE)
    torch.save(reference_model.state_dict(), folder / "maskrcnn.pth")
    # The user's command: python -m models.convert torchvision-maskrcnn[-v2] IN.pth OUT.keras
    source = "torchvision-maskrcnn" if variant == "v1" else "torchvision-maskrcnn-v2"
    model = convert.main([source, str(folder / "maskrcnn.pth"), str(folder / "maskrcnn.keras")])
    reference = reference_outputs(reference_model, image)
    inputs = {"images": reference["images"], "image_sizes": np.array([reference["image_size"]], np.int32)}
    return {"image": image, "model": model, "path": folder / "maskrcnn.keras", "reference": reference,
            "inputs": inputs, "rpn": {k: np.asarray(v) for k, v in rpn_model(model)(inputs).items()}}


def test_fpn_features_match(setup):
    for level, expected in setup["reference"]["features"].items():
        _close(setup["rpn"][level], expected)


def test_anchors_and_rpn_head_match(setup):
    ours, reference = setup["rpn"], setup["reference"]
    np.testing.assert_array_equal(ours["anchors"][0], reference["anchors"])
    _close(ours["objectness"][0], reference["objectness"])
    _close(ours["rpn_deltas"][0], reference["rpn_deltas"][:, XY_SWAP])


def test_proposals_match(setup):
    ours, expected = setup["rpn"], setup["reference"]["proposals"]
    count = int(ours["num_proposals"][0])
    assert count == len(expected) == 1000
    proposals = ours["proposals"][0, :count]
    # Scores a few 1e-6 apart may swap places (our objectness differs from torchvision's by ~1e-5): compare as sets.
    distance = np.abs(proposals[:, None] - expected[None]).max(-1)
    assert distance.min(axis=1).max() < 1e-2 and distance.min(axis=0).max() < 1e-2
    assert np.all(np.diff(ours["proposal_scores"][0, :count]) <= 0)


@pytest.fixture(scope="module")
def heads(setup):
    """Our RoI heads on torchvision's proposals."""
    proposals = setup["reference"]["proposals"]
    outputs = roi_heads_model(setup["model"])(
        {**setup["inputs"], "rois": proposals[None], "num_rois": np.array([len(proposals)], np.int32)})
    return {k: np.asarray(v)[0] for k, v in outputs.items()}


def test_box_head_matches_on_the_same_proposals(setup, heads):
    reference = setup["reference"]
    _close(heads["class_logits"], reference["class_logits"][:, SLOTS])
    deltas = reference["box_regression"].reshape(len(reference["proposals"]), -1, 4)[:, SLOTS][:, :, XY_SWAP]
    _close(heads["box_deltas"], deltas)


def test_detections_and_mask_probabilities_match_on_the_same_proposals(setup, heads):
    reference, model = setup["reference"], setup["model"]
    count = int(heads["num_detections"])
    assert count == len(reference["boxes"]) == 100  # the random weights are scaled to give a full set
    category_ids = np.asarray(model.get_layer("categories").category_ids)
    labels, boxes = category_ids[heads["class_ids"][:count] - 1], heads["boxes"][:count]
    # Each reference detection is one of ours (same label, box within 1e-2 px). Two detections whose scores
    # are a few 1e-6 apart may swap places (float32 rounding differs between CPUs: seen on an AVX2-only
    # machine), so the pairing may permute the order, but only among scores within 1e-5 of each other.
    same = (labels[None] == reference["labels"][:, None]) & (
        np.abs(boxes[None] - reference["boxes"][:, None]).max(-1) < 1e-2)
    assert same.sum(axis=1).min() >= 1
    order = same.argmax(axis=1)  # ours for each reference detection
    assert sorted(order) == list(range(count))
    np.testing.assert_allclose(heads["scores"][:count], reference["scores"], atol=1e-5)
    np.testing.assert_allclose(heads["scores"][order], reference["scores"], atol=1e-5)
    np.testing.assert_allclose(boxes[order], reference["boxes"], atol=1e-2)
    np.testing.assert_allclose(heads["masks"][order], reference["mask_probs"], atol=2e-3)


def test_transform_matches_torchvision_at_800_1333():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    image = grace_hopper()
    transform = GeneralizedRCNNTransform(800, 1333, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).eval()
    with torch.no_grad():
        expected, _ = transform([torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255.0])
    ours = preprocess([image])
    assert tuple(ours["image_sizes"].numpy()[0]) == tuple(expected.image_sizes[0]) == (937, 800)
    # 1e-4 normalised = 0.006 grey levels: float32 rounding of two interpolation orders (measured 3e-5).
    np.testing.assert_allclose(ours["images"].numpy(), expected.tensors.permute(0, 2, 3, 1).numpy(), atol=1e-4)


def _reference_order(detections, reference, kept=None, score_atol=1e-4):
    """Index into the reference's detections of each of ours, checked to be a permutation.

    Our scores differ from torchvision's by ~1e-5 (our transform's input, float
    rounding), so detections whose scores are that close may come in either
    order (measured: two 2e-6 apart): each of ours is the reference detection
    nearest its box among those scoring within score_atol of it. kept: [N] bool,
    the reference detections ours should be (default all).
    """
    indices = np.arange(len(reference["scores"])) if kept is None else np.flatnonzero(kept)
    boxes, scores = reference["pasted_boxes"][indices], reference["scores"][indices]
    order = []
    for box, score in zip(detections["boxes"], detections["scores"]):
        candidates = np.flatnonzero(np.abs(scores - score) <= score_atol)
        assert len(candidates), score
        order.append(candidates[np.argmin(np.abs(boxes[candidates] - box).max(axis=1))])
    assert sorted(order) == list(range(len(scores)))
    return indices[order]


def test_detect_end_to_end_matches_torchvision(setup):
    """Photo in: boxes, COCO ids and scores as torchvision's, masks pasted in the original pixels."""
    reference = setup["reference"]
    detections = detect(setup["model"], [setup["image"]], min_size=MIN_SIZE, max_size=MAX_SIZE)[0]
    assert len(detections["boxes"]) == len(reference["pasted_boxes"])
    order = _reference_order(detections, reference)
    np.testing.assert_allclose(detections["boxes"], reference["pasted_boxes"][order], atol=1e-2)
    np.testing.assert_array_equal(detections["category_ids"], reference["labels"][order])
    # Our own transform's input differs by ~1e-5 (see the 800 / 1333 test): scores to 1e-4 here.
    np.testing.assert_allclose(detections["scores"], reference["scores"][order], atol=1e-4)
    # The pasted masks against torchvision's own pasted masks (its paste_masks_in_image, threshold 0.5).
    masks = detections["masks"].dense()
    expected = reference["pasted_probs"][order] >= 0.5
    union = (masks | expected).sum(axis=(1, 2))
    iou = (masks & expected).sum(axis=(1, 2)) / np.maximum(union, 1)
    assert masks.shape == (100, 600, 512) and union.min() > 0
    # Random-weight masks hover around 0.5, so probabilities 1e-3 apart flip a pixel here and there: IoU over all
    # masks >= 0.99, and for each mask IoU >= 0.95 or at most 2 pixels differing (tiny masks lose >2.5% a pixel).
    assert (masks & expected).sum() / union.sum() >= 0.99
    differing = (masks ^ expected).sum(axis=(1, 2))
    assert np.all((iou >= 0.95) | (differing <= 2)), (iou[iou < 0.95], differing[iou < 0.95], union[iou < 0.95])


@pytest.mark.slow
def test_converted_file_loads_in_safe_mode_and_detects_the_same(setup):
    """The .keras file alone (no torch involved) gives torchvision's detections and carries the COCO categories."""
    model = keras.saving.load_model(setup["path"], safe_mode=True)
    categories = model.get_layer("categories")
    assert categories.category_ids[:3] == (1, 2, 3) and categories.category_ids[-1] == 90
    assert categories.category_names[0] == "person" and len(categories.category_names) == 80
    reference = setup["reference"]
    detections = detect(model, [setup["image"]], min_size=MIN_SIZE, max_size=MAX_SIZE, score_threshold=0.15)[0]
    kept = reference["scores"] >= 0.15  # as torchvision's box_score_thresh=0.15 would keep
    assert 0 < kept.sum() < len(kept) and len(detections["boxes"]) == kept.sum()
    order = _reference_order(detections, reference, kept)
    np.testing.assert_allclose(detections["boxes"], reference["pasted_boxes"][order], atol=1e-2)
    np.testing.assert_array_equal(detections["category_ids"], reference["labels"][order])

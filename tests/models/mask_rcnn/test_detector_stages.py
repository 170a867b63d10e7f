"""The detector's stages one by one against independent references (torchvision's modules, tf.image ops)."""
import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
import torchvision
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from models.fpn import NearestResizeLike, build_resnet_fpn
from models.mask_rcnn.anchors import ANCHOR_SIZES, ASPECT_RATIOS, Anchors
from models.convert import command as convert
from models.convert.torchvision import COCO_CATEGORIES, convert_maskrcnn, convert_resnet50
from models.mask_rcnn.detector import build_mask_rcnn, detector_layers
from models.mask_rcnn.nms import grouped_nms
from models.mask_rcnn.transform import detect
from models.roi_align import MultiLevelRoIAlign
from models.convert.torch_reader import CheckpointMismatch


def _xyxy_to_yxyx(boxes):
    return np.asarray(boxes)[..., [1, 0, 3, 2]]


@pytest.mark.parametrize("padded_size", [(224, 320), (800, 1088), (96, 160)])
def test_anchors_match_torchvision_anchor_generator(padded_size):
    # Feature sizes as the FPN makes them: ceil(size / stride), P6 = ceil(P5 / 2) (so P6's stride is not 64).
    sizes = [tuple(-(-s // 4) for s in padded_size)]
    for _ in range(4):
        sizes.append(tuple(-(-s // 2) for s in sizes[-1]))
    features = [np.zeros((1, h, w, 1), np.float32) for h, w in sizes]
    ours = Anchors()([np.zeros((1, *padded_size, 3), np.float32), *features]).numpy()[0]
    generator = AnchorGenerator(tuple((s,) for s in ANCHOR_SIZES), (ASPECT_RATIOS,) * len(ANCHOR_SIZES))
    image_list = ImageList(torch.zeros(1, 3, *padded_size), [padded_size])
    expected = generator(image_list, [torch.zeros(1, 1, h, w) for h, w in sizes])[0].numpy()
    np.testing.assert_array_equal(ours, _xyxy_to_yxyx(expected))


def test_grouped_nms_matches_tf_non_max_suppression_per_group():
    rng = np.random.default_rng(0)
    batch, count, groups, keep, threshold = 2, 80, 3, 25, 0.1
    corner = rng.uniform(0, 50, (batch, count, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(5, 30, (batch, count, 2))], -1).astype(np.float32)
    group = rng.integers(0, groups, (batch, count))
    score = rng.uniform(0, 1, (batch, count)).astype(np.float32)
    scores = np.where(np.arange(groups) == group[..., None], score[..., None], -1.0).astype(np.float32)
    got_boxes, got_scores, got_groups, valid = (np.asarray(x) for x in grouped_nms(
        boxes[:, :, None], scores, max_output_size=keep, iou_threshold=0.5, score_threshold=threshold))
    for b in range(batch):
        kept = []
        for g in range(groups):
            index = np.flatnonzero((group[b] == g) & (score[b] > threshold))
            selected = tf.image.non_max_suppression(boxes[b, index], score[b, index], count, iou_threshold=0.5)
            kept += [(score[b, i], g, i) for i in index[selected.numpy()]]
        kept = sorted(kept, reverse=True)[:keep]
        assert valid[b] == len(kept)
        np.testing.assert_array_equal(got_scores[b, :valid[b]], [s for s, _, _ in kept])
        np.testing.assert_array_equal(got_groups[b, :valid[b]], [g for _, g, _ in kept])
        np.testing.assert_array_equal(got_boxes[b, :valid[b]], boxes[b, [i for _, _, i in kept]])
        assert not got_scores[b, valid[b]:].any()


ROI_IMAGE_SIZE = (256, 320)


def _random_levels_and_boxes(seed, channels, count):
    """P2..P5-sized maps [2, H / s, W / s, channels] float32 of a 256 x 320 image, and random boxes
    [2, count, 4] float32 (y1, x1, y2, x2) of every scale, sub-pixel to larger than the image."""
    rng = np.random.default_rng(seed)
    features = [rng.normal(size=(2, ROI_IMAGE_SIZE[0] // s, ROI_IMAGE_SIZE[1] // s, channels)).astype(np.float32)
                for s in (4, 8, 16, 32)]
    y1x1 = rng.uniform(-10, 200, (2, count, 2))
    size = np.exp(rng.uniform(np.log(0.3), np.log(500), (2, count, 2)))
    return features, np.concatenate([y1x1, y1x1 + size], -1).astype(np.float32)


def _torchvision_roi_align(levels, boxes, output_size):
    """torchvision's MultiScaleRoIAlign of [B, C, H, W] torch levels (P2..P5) and boxes [B, R, 4] (y1, x1, y2, x2)."""
    pool = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], output_size, 2)
    return pool({str(k): f for k, f in enumerate(levels)}, [torch.from_numpy(_xyxy_to_yxyx(b)) for b in boxes],
                [ROI_IMAGE_SIZE] * len(boxes))


def test_unaligned_multilevel_roi_align_matches_torchvision_multiscale_roi_align():
    channels = 3
    features, boxes = _random_levels_and_boxes(1, channels, 40)
    # Boxes exactly on level boundaries (112, 224, 448 pixels).
    boxes[:, :3] = [[10, 20, 122, 132], [0, 0, 224, 224], [5, 5, 453, 453]]
    ours = MultiLevelRoIAlign(7, 2, aligned=False, level_epsilon=1e-6)([boxes, *features]).numpy()
    expected = _torchvision_roi_align([torch.from_numpy(f).permute(0, 3, 1, 2) for f in features], boxes, 7)
    # float32 rounding of the sample positions: ~1e-5 on N(0, 1) features; a wrong level or offset would be O(1).
    np.testing.assert_allclose(ours.reshape(-1, 7, 7, channels), expected.permute(0, 2, 3, 1).numpy(), atol=1e-4)


def test_flat_roi_align_of_rois_of_any_images_matches_torchvision():
    # The training step's form: one flat list of RoIs with their image index (7 of image 0 and 5 of image 1,
    # interleaved), against torchvision's per-image lists.
    channels = 3
    features, boxes = _random_levels_and_boxes(2, channels, 7)
    per_image = [boxes[0], boxes[1, :5]]
    image_index = np.array([0, 1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 0], np.int32)
    flat = np.zeros((len(image_index), 4), np.float32)
    for b, image_boxes in enumerate(per_image):
        flat[image_index == b] = image_boxes
    ours = MultiLevelRoIAlign(14, 2, aligned=False, level_epsilon=1e-6)([flat, *features],
                                                                        image_index=image_index).numpy()
    expected = _torchvision_roi_align([torch.from_numpy(f).permute(0, 3, 1, 2) for f in features], per_image, 14)
    order = np.concatenate([np.flatnonzero(image_index == b) for b in (0, 1)])  # torchvision's: image by image
    assert ours.shape == (12, 14, 14, channels)
    np.testing.assert_allclose(ours[order], expected.permute(0, 2, 3, 1).numpy(), atol=1e-4)


@pytest.mark.parametrize("output_size", [7, 14])
def test_multilevel_roi_align_gradient_matches_torchvision_backward(output_size):
    # The gradient w.r.t. every level (models.roi_align's own backward, in a tf.function and eagerly) against
    # torch autograd through torchvision's MultiScaleRoIAlign (its C++ roi_align backward) on the same inputs.
    channels = 4
    features, boxes = _random_levels_and_boxes(3, channels, 30)
    # A box twice (their gradients add up), one over the border, one on the coarsest level (P5).
    boxes[0, :4] = boxes[1, :4] = [[8, 8, 40, 40], [8, 8, 40, 40], [200, 250, 260, 330], [-100, -80, 400, 420]]
    rng = np.random.default_rng(4)
    upstream = rng.normal(size=(2, 30, output_size, output_size, channels)).astype(np.float32)
    layer = MultiLevelRoIAlign(output_size, 2, aligned=False, level_epsilon=1e-6)

    def gradients(levels):
        with tf.GradientTape() as tape:
            tape.watch(levels)
            loss = tf.reduce_sum(layer([boxes, *levels]) * upstream)
        return tape.gradient(loss, levels)

    levels = [torch.from_numpy(f).permute(0, 3, 1, 2).requires_grad_() for f in features]
    pooled = _torchvision_roi_align(levels, boxes, output_size)
    (pooled * torch.from_numpy(upstream.reshape(-1, output_size, output_size, channels)).permute(0, 3, 1, 2)
     ).sum().backward()
    expected = [level.grad.permute(0, 2, 3, 1).numpy() for level in levels]
    assert all(np.abs(e).max() > 0 for e in expected)  # every level receives some gradient
    inputs = [tf.constant(f) for f in features]
    for ours in (tf.function(gradients)(inputs), gradients(inputs)):
        for got, want in zip(ours, expected):
            np.testing.assert_allclose(got.numpy(), want, atol=1e-4)


@pytest.mark.parametrize("source, target", [((5, 7), (13, 10)), ((13, 25), (25, 50)), ((4, 4), (7, 9))])
def test_nearest_resize_like_matches_torch_interpolate(source, target):
    x = np.random.default_rng(2).normal(size=(1, *source, 2)).astype(np.float32)
    ours = NearestResizeLike()([x, np.zeros((1, *target, 1), np.float32)]).numpy()
    expected = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=target, mode="nearest")
    np.testing.assert_array_equal(ours, expected.permute(0, 2, 3, 1).numpy())


def test_fpn_upsampling_to_the_lateral_takes_any_input_size():
    model = build_resnet_fpn(18, channels=8, base_width=16, upsample_to_lateral=True)
    outputs = model(np.zeros((1, 70, 90, 3), np.float32))
    assert [tuple(outputs[f"P{k}"].shape[1:3]) for k in range(2, 7)] == [(18, 23), (9, 12), (5, 6), (3, 3), (2, 2)]


def test_coco_categories_are_torchvisions():
    from torchvision.models.detection.mask_rcnn import MaskRCNN_ResNet50_FPN_Weights

    slots = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # index = COCO id, "N/A" unused
    assert [(i, name) for i, name in enumerate(slots) if i and name != "N/A"] == list(COCO_CATEGORIES)


def _tiny_detector(variant="v1"):
    return build_mask_rcnn(3, variant=variant, fpn_channels=16, base_width=16, category_ids=(7, 9, 11),
                           category_names=("a", "b", "c"))


@pytest.fixture(scope="module")
def tiny():
    """A narrow v1 detector whose class branch calls everything background."""
    model = _tiny_detector()
    logits = detector_layers(model)["box_head"].class_logits
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel * 0, bias + np.array([50.0, 0, 0, 0], np.float32)])
    return model


def test_backbone_freezing_follows_torchvision(tiny):
    layers = detector_layers(tiny)["fpn"].get_layer("backbone").layers
    by_name = {layer.name: layer for layer in layers}
    assert not by_name["conv1_conv"].trainable and not by_name["conv2_block1_1_conv"].trainable
    assert by_name["conv3_block1_1_conv"].trainable and by_name["conv5_block3_3_conv"].trainable
    assert not any(layer.trainable for layer in layers if isinstance(layer, keras.layers.BatchNormalization))
    v2_backbone = detector_layers(_tiny_detector("v2"))["fpn"].get_layer("backbone")
    assert v2_backbone.get_layer("conv3_block1_1_bn").trainable  # v2 trains its backbone's BN
    assert not v2_backbone.get_layer("conv2_block1_1_bn").trainable


def test_image_without_objects_gives_no_detections(tiny):
    grey = np.full((48, 64, 3), 128, np.uint8)
    result = detect(tiny, [grey], min_size=64, max_size=100)[0]
    assert len(result["boxes"]) == len(result["scores"]) == len(result["masks"]) == 0
    assert result["masks"].image_size == (48, 64) and result["boxes"].shape == (0, 4)


@pytest.mark.slow
def test_keras_round_trip_in_safe_mode(tiny, tmp_path):
    tiny.save(tmp_path / "tiny.keras")
    loaded = keras.saving.load_model(tmp_path / "tiny.keras", safe_mode=True)
    inputs = {"images": np.random.default_rng(3).normal(size=(2, 64, 96, 3)).astype(np.float32),
              "image_sizes": np.array([[64, 96], [50, 70]], np.int32)}
    expected, got = tiny(inputs), loaded(inputs)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value)
    assert loaded.get_layer("categories").category_names == ("a", "b", "c")


def _randomise_batch_norms(module):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for norm in (m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            n = norm.num_features
            norm.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            norm.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            norm.weight.copy_(0.5 + torch.rand(n, generator=generator))
            norm.bias.copy_(0.1 * torch.randn(n, generator=generator))
    return module.eval()


@pytest.mark.slow
def test_convert_resnet50_matches_torchvision_resnet50(tmp_path):
    torch.manual_seed(0)
    reference = _randomise_batch_norms(torchvision.models.resnet50(weights=None))
    torch.save(reference.state_dict(), tmp_path / "resnet50.pth")
    backbone = convert.main(["torchvision-resnet50", str(tmp_path / "resnet50.pth"), str(tmp_path / "backbone.keras")])
    backbone = keras.saving.load_model(tmp_path / "backbone.keras", safe_mode=True)
    image = np.random.default_rng(4).normal(size=(1, 64, 96, 3)).astype(np.float32)
    ours = backbone(image)
    with torch.no_grad():
        x = torch.from_numpy(image).permute(0, 3, 1, 2)
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        for stage in range(2, 6):
            x = getattr(reference, f"layer{stage - 1}")(x)
            expected = x.permute(0, 2, 3, 1).numpy()
            np.testing.assert_allclose(ours[f"C{stage}"], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    with pytest.raises(SystemExit, match="backbone.keras: exists already"):
        convert.main(["torchvision-resnet50", str(tmp_path / "resnet50.pth"), str(tmp_path / "backbone.keras")])
    with pytest.raises(SystemExit, match="must be a .keras file"):
        convert.main(["torchvision-resnet50", str(tmp_path / "resnet50.pth"), str(tmp_path / "backbone.h5")])
    state = reference.state_dict()
    del state["layer2.0.conv1.weight"]
    torch.save(state, tmp_path / "incomplete.pth")
    with pytest.raises(CheckpointMismatch, match="layer2.0.conv1.weight"):
        convert_resnet50(tmp_path / "incomplete.pth")
    with pytest.raises(SystemExit, match=r"incomplete.pth: .*missing keys \[layer2.0.conv1.weight\]"):
        convert.main(["torchvision-resnet50", str(tmp_path / "incomplete.pth"), str(tmp_path / "other.keras")])
    assert not (tmp_path / "other.keras").exists()


@pytest.mark.slow
def test_convert_maskrcnn_reads_the_published_files_older_key_names(tmp_path):
    """torchvision's published v1 file predates its current key names (rpn.head.conv.weight, ...)."""
    torch.manual_seed(0)
    reference = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    old_names = {"rpn.head.conv.0.0.": "rpn.head.conv."}
    old_names.update({f"roi_heads.mask_head.{i}.0.": f"roi_heads.mask_head.mask_fcn{i + 1}." for i in range(4)})
    old_names.update({f"backbone.fpn.{kind}_blocks.{i}.0.": f"backbone.fpn.{kind}_blocks.{i}."
                      for kind in ("inner", "layer") for i in range(4)})
    state = {}
    for key, value in reference.state_dict().items():
        for new, old in old_names.items():
            key = key.replace(new, old)
        state[key] = value
    assert "rpn.head.conv.weight" in state and "roi_heads.mask_head.mask_fcn4.bias" in state
    torch.save(state, tmp_path / "old_names.pth")
    layers = detector_layers(convert_maskrcnn(tmp_path / "old_names.pth"))
    np.testing.assert_array_equal(layers["rpn_head"].convs[0].get_weights()[1], state["rpn.head.conv.bias"].numpy())
    np.testing.assert_array_equal(layers["mask_head"].convs[3].get_weights()[1],
                                  state["roi_heads.mask_head.mask_fcn4.bias"].numpy())
    np.testing.assert_array_equal(layers["fpn"].get_layer("fpn_lateral2").get_weights()[1],
                                  state["backbone.fpn.inner_blocks.0.bias"].numpy())


def test_a_batch_gives_each_image_its_own_detections():
    """Images of different sizes in one batch (padded alike) give what each gives alone: nothing leaks across."""
    keras.utils.set_random_seed(5)
    model = _tiny_detector()
    rng = np.random.default_rng(5)
    images = np.zeros((2, 64, 96, 3), np.float32)
    images[0] = rng.normal(size=(64, 96, 3))
    images[1, :50, :70] = rng.normal(size=(50, 70, 3))
    sizes = np.array([[64, 96], [50, 70]], np.int32)
    together = model({"images": images, "image_sizes": sizes})
    assert int(together["num_detections"][0]) > 0 and int(together["num_detections"][1]) > 0
    for b in range(2):
        alone = model({"images": images[b:b + 1], "image_sizes": sizes[b:b + 1]})
        count = int(alone["num_detections"][0])
        assert int(together["num_detections"][b]) == count
        # Batched and single convolutions round differently (by up to 4e-4 px on these boxes on an AVX2 CPU).
        for key in ("boxes", "scores", "masks"):
            np.testing.assert_allclose(together[key][b, :count], alone[key][0, :count], atol=1e-3)
        np.testing.assert_array_equal(together["class_ids"][b], alone["class_ids"][0])
        boxes = together["boxes"][b, :count].numpy()
        assert boxes[:, 2].max() <= sizes[b, 0] and boxes[:, 3].max() <= sizes[b, 1]


def test_proposals_and_detections_keep_float32_boxes_under_mixed_float16():
    """Box arithmetic in float32 whatever the policy: coordinates past 1024 px, where float16's spacing is 1 px,
    give the same proposals and detections under mixed_float16 as under float32 (the FPN levels handed to
    Proposals, for their shapes, are float16 as in the mixed detector)."""
    from models.mask_rcnn.detections import Detections
    from models.mask_rcnn.rpn import Proposals

    rng = np.random.default_rng(0)
    levels = [tf.zeros([1, 4 // 2 ** k or 1, 4 // 2 ** k or 1, 8], tf.float16) for k in range(5)]
    count = 3 * sum(int(level.shape[1] * level.shape[2]) for level in levels)
    corners = rng.uniform(1030.0, 1300.0, size=(1, count, 2)).astype(np.float32)
    anchors = tf.constant(np.concatenate([corners, corners + rng.uniform(5, 40, (1, count, 2))], -1), tf.float32)
    proposal_inputs = [tf.constant(rng.normal(size=(1, count)), tf.float32),
                       tf.constant(rng.normal(0, 0.1, (1, count, 4)), tf.float32), anchors,
                       tf.constant([[1400, 1400]], tf.int32), *levels]
    rois = anchors[:, :20]
    detection_inputs = [tf.constant(rng.normal(0, 3, (1, 20, 4)), tf.float32),
                        tf.constant(rng.normal(0, 0.1, (1, 20, 4, 4)), tf.float32), rois,
                        tf.constant([20], tf.int32), tf.constant([[1400, 1400]], tf.int32)]
    results = {}
    for policy in ("float32", "mixed_float16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            results[policy] = (Proposals(3, pre_nms_top_n=50, post_nms_top_n=20)(proposal_inputs),
                               Detections(score_threshold=0.0)(detection_inputs))
        finally:
            keras.mixed_precision.set_global_policy("float32")
    for got, want in zip(tf.nest.flatten(results["mixed_float16"]), tf.nest.flatten(results["float32"])):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4)

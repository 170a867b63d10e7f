"""The whole Mask R-CNN detector (torchvision's maskrcnn_resnet50_fpn and _v2, layer for layer) as one Keras model.

Stages (one module each): ResNet-FPN (models/fpn.py) -> anchors (anchors.py)
-> RPN head and proposals (rpn.py) -> 7x7 RoIAlign + box head (roi_heads.py)
-> detections (detections.py) -> 14x14 RoIAlign + mask head on the
detections, and the detected class's mask channel (roi_heads.py).
Input transform and pasting into the original image: transform.py.

The stages are named layers of the model, so other code reuses them on other
inputs (training on sampled RoIs, tests on given proposals): see
`detector_layers`, `rpn_model`, `roi_heads_model`.
"""
import keras

from models.fpn import build_resnet_fpn
from models.mask_rcnn.anchors import ANCHOR_SIZES, ASPECT_RATIOS, Anchors
from models.mask_rcnn.detections import CategoryIds, Detections
from models.mask_rcnn.roi_heads import MaskHead
from models.mask_rcnn.roi_heads import PickMaskChannel
from models.mask_rcnn.roi_heads import BoxHead
from models.mask_rcnn.rpn import Proposals, RPNHead
from models.roi_align import MultiLevelRoIAlign

VARIANTS = ("v1", "v2")
TORCHVISION_BN_EPSILON = 1e-5
# torchvision's MultiScaleRoIAlign: the original (unaligned) RoIAlign and its LevelMapper's epsilon.
_ROI_ALIGN = {"sampling_ratio": 2, "aligned": False, "level_epsilon": 1e-6}
LAYER_NAMES = ("fpn", "anchors", "rpn_head", "proposals", "box_roi_align", "box_head", "detections",
               "mask_roi_align", "mask_head", "class_picked_masks", "categories")


def freeze_backbone(backbone, trainable_stages, freeze_batch_norm):
    """torchvision's trainable_backbone_layers: only the last `trainable_stages` of conv5..conv1 train.

    freeze_batch_norm: every BN of the backbone uses its moving statistics and
    keeps its affine parameters (torchvision's FrozenBatchNorm2d).
    """
    frozen = {f"conv{stage}" for stage in range(1, 6 - trainable_stages)} | {"pool1"}
    for layer in backbone.layers:
        if layer.name.split("_")[0] in frozen:
            layer.trainable = False
        if freeze_batch_norm and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _detector_inputs():
    return keras.Input((None, None, 3), name="images"), keras.Input((2,), dtype="int32", name="image_sizes")


def build_mask_rcnn(num_classes, *, backbone="resnet50", variant="v1", category_ids=None, category_names=None,
                    trainable_backbone_stages=3, rpn_pre_nms_top_n=1000, rpn_post_nms_top_n=1000,
                    rpn_nms_threshold=0.7, score_threshold=0.05, nms_threshold=0.5, max_detections=100,
                    fpn_channels=256, base_width=64, mask_head_channels=256, box_head_units=1024, name="mask_rcnn"):
    """Mask R-CNN with torchvision's architecture, inference graph.

    Args:
      num_classes: K object classes (background not counted).
      backbone: "resnet50" (torchvision's; "resnet101" also builds).
      variant: "v1" (maskrcnn_resnet50_fpn: FrozenBatchNorm backbone) or "v2"
        (maskrcnn_resnet50_fpn_v2: BN in the FPN and heads, 2-conv RPN head,
        4-conv box head, trainable backbone BN).
      category_ids, category_names: K dataset category ids / names of classes
        1..K (default 1..K, "class_k"), carried by the model (layer "categories").
      trainable_backbone_stages: torchvision's trainable_backbone_layers (3:
        conv3..conv5 train, the stem and conv2 do not).
      rpn_pre_nms_top_n, rpn_post_nms_top_n: proposals per level before NMS and
        per image after (torchvision's test values; 2000 / 2000 in training).
      score_threshold, nms_threshold, max_detections: the detections'.
      fpn_channels, base_width, mask_head_channels, box_head_units: widths
        (torchvision's 256, 64, 256, 1024; narrower in tests and the CPU demo:
        the 256-channel mask head costs about 0.9 GFLOPs per RoI).

    Inputs: {"images": [B, H, W, 3] float32, normalised (data.normalization.INPUT_MEAN
             / INPUT_STD on 0..255 RGB) and zero-padded (transform.preprocess),
             "image_sizes": [B, 2] int32, each image's (height, width) before padding}.
    Outputs (D = max_detections, valid detections first, zero padding after):
      {"boxes": [B, D, 4] float32 (y1, x1, y2, x2) in pixels of the input images,
       "class_ids": [B, D] int32 (1..K, 0 = padding), "category_ids": [B, D] int32,
       "scores": [B, D] float32 (decreasing), "num_detections": [B] int32,
       "masks": [B, D, 28, 28] float32 (mask probabilities of the detected class
       inside its box)}.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    depths = {"resnet50": 50, "resnet101": 101}
    if backbone not in depths:
        raise ValueError(f"backbone must be one of {sorted(depths)}, got {backbone!r}")
    v2 = variant == "v2"
    category_ids = tuple(range(1, num_classes + 1)) if category_ids is None else tuple(category_ids)
    category_names = (tuple(f"class_{k}" for k in range(1, num_classes + 1)) if category_names is None
                      else tuple(category_names))
    if len(category_ids) != num_classes:
        raise ValueError(f"{len(category_ids)} category ids for {num_classes} classes")

    images, image_sizes = _detector_inputs()
    fpn = build_resnet_fpn(depths[backbone], channels=fpn_channels, base_width=base_width, stride_on="3x3",
                           bn_epsilon=TORCHVISION_BN_EPSILON, upsample_to_lateral=True, batch_norm=v2, name="fpn")
    freeze_backbone(fpn.get_layer("backbone"), trainable_backbone_stages, freeze_batch_norm=not v2)
    pyramid = fpn(images)
    levels = [pyramid[f"P{k}"] for k in range(2, 7)]

    anchors = Anchors(ANCHOR_SIZES, ASPECT_RATIOS, name="anchors")([images, *levels])
    num_anchors = len(ASPECT_RATIOS)
    objectness, deltas = RPNHead(num_anchors, fpn_channels, num_convs=2 if v2 else 1, name="rpn_head")(levels)
    proposals, _, num_proposals = Proposals(
        num_anchors, rpn_pre_nms_top_n, rpn_post_nms_top_n, rpn_nms_threshold, name="proposals")(
        [objectness, deltas, anchors, image_sizes, *levels])

    p2_to_p5 = levels[:4]  # RoIs read P2..P5
    box_features = MultiLevelRoIAlign(7, name="box_roi_align", **_ROI_ALIGN)([proposals, *p2_to_p5])
    box_head = (BoxHead(num_classes, box_head_units, num_fc=1, num_convs=4, conv_channels=256, name="box_head")
                if v2 else BoxHead(num_classes, box_head_units, num_fc=2, name="box_head"))
    class_logits, box_deltas = box_head(box_features)
    boxes, class_ids, scores, num_detections = Detections(
        score_threshold, nms_threshold, max_detections, name="detections")(
        [class_logits, box_deltas, proposals, num_proposals, image_sizes])

    mask_features = MultiLevelRoIAlign(14, name="mask_roi_align", **_ROI_ALIGN)([boxes, *p2_to_p5])
    mask_logits = MaskHead(num_classes, mask_head_channels, batch_norm=v2, bn_epsilon=TORCHVISION_BN_EPSILON,
                           name="mask_head")(mask_features)
    masks = PickMaskChannel(name="class_picked_masks")([mask_logits, class_ids])
    outputs = {"boxes": boxes, "class_ids": class_ids,
               "category_ids": CategoryIds(category_ids, category_names, name="categories")(class_ids),
               "scores": scores, "num_detections": num_detections, "masks": masks}
    return keras.Model({"images": images, "image_sizes": image_sizes}, outputs, name=name)


def detector_layers(model):
    """{name: layer} of the detector's stages (LAYER_NAMES), to call them on other inputs.

    "fpn" is a keras.Model (images -> {"P2".."P6"}); the others are the layers
    built in build_mask_rcnn (see their docstrings for their call signatures).
    """
    return {name: model.get_layer(name) for name in LAYER_NAMES}


def rpn_model(model):
    """keras.Model, the detector's own inputs -> its intermediate RPN outputs.

    Outputs: {"P2".."P6": FPN features [B, H_k, W_k, C], "objectness": [B, N]
    logits, "rpn_deltas": [B, N, 4] (dy, dx, dh, dw), "anchors": [1, N, 4],
    "proposals": [B, P, 4], "proposal_scores": [B, P], "num_proposals": [B]}.
    """
    layers = detector_layers(model)
    images, image_sizes = _detector_inputs()
    pyramid = layers["fpn"](images)
    levels = [pyramid[f"P{k}"] for k in range(2, 7)]
    anchors = layers["anchors"]([images, *levels])
    objectness, deltas = layers["rpn_head"](levels)
    proposals, proposal_scores, num_proposals = layers["proposals"](
        [objectness, deltas, anchors, image_sizes, *levels])
    outputs = {**{f"P{k}": pyramid[f"P{k}"] for k in range(2, 7)}, "objectness": objectness,
               "rpn_deltas": deltas, "anchors": anchors, "proposals": proposals,
               "proposal_scores": proposal_scores, "num_proposals": num_proposals}
    return keras.Model({"images": images, "image_sizes": image_sizes}, outputs, name=f"{model.name}_rpn")


def roi_heads_model(model):
    """keras.Model: the box and mask branches on given RoIs instead of the RPN's proposals.

    Inputs: {"images", "image_sizes" (as the detector), "rois": [B, R, 4] float32
    (y1, x1, y2, x2, image pixels), "num_rois": [B] int32 (valid RoIs first)}.
    Outputs: {"class_logits": [B, R, K + 1], "box_deltas": [B, R, K + 1, 4],
    and the detector's boxes / class_ids / scores / num_detections / masks}.
    """
    layers = detector_layers(model)
    images, image_sizes = _detector_inputs()
    rois = keras.Input((None, 4), name="rois")
    num_rois = keras.Input((), dtype="int32", name="num_rois")
    pyramid = layers["fpn"](images)
    levels = [pyramid[f"P{k}"] for k in range(2, 6)]
    class_logits, box_deltas = layers["box_head"](layers["box_roi_align"]([rois, *levels]))
    boxes, class_ids, scores, num_detections = layers["detections"](
        [class_logits, box_deltas, rois, num_rois, image_sizes])
    mask_logits = layers["mask_head"](layers["mask_roi_align"]([boxes, *levels]))
    masks = layers["class_picked_masks"]([mask_logits, class_ids])
    outputs = {"class_logits": class_logits, "box_deltas": box_deltas, "boxes": boxes, "class_ids": class_ids,
               "scores": scores, "num_detections": num_detections, "masks": masks}
    return keras.Model({"images": images, "image_sizes": image_sizes, "rois": rois, "num_rois": num_rois},
                       outputs, name=f"{model.name}_roi_heads")

"""torchvision checkpoints -> this project's Keras models: Mask R-CNN (v1, v2) and the ImageNet ResNet-50.

convert_maskrcnn: a state dict as torchvision publishes it
(maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth, maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth,
or any model.state_dict() of those builders) -> a build_mask_rcnn .keras file.
- Class layout: torchvision's COCO heads have 91 slots (slot = COCO category
  id, 0 = background, 11 ids unused); the Keras model has the 80 COCO
  categories as contiguous classes 1..80 (COCO-id order, data.coco.Categories'
  order) and carries their COCO ids and names (layer "categories"). The unused
  slots are dropped: exact wherever their logits are negligible, as in the
  trained weights.
- Box order: torchvision regresses (dx, dy, dw, dh) on (x1, y1, x2, y2); this
  project (dy, dx, dh, dw) on (y1, x1, y2, x2): the delta layers' output
  channels are permuted.
- Flatten order: torchvision's box head flattens RoI features [C, 7, 7]; the
  first fully connected layer's input rows are permuted to Keras's [7, 7, C].
- Older torchvision key names (rpn.head.conv.weight, fpn.inner_blocks.0.weight,
  mask_head.mask_fcn1.weight, as in the published v1 file) are read too.
convert_resnet50: torchvision's ImageNet ResNet-50 (resnet50-0676ba61.pth,
resnet50-11ad3fa6.pth) -> the detector's backbone (a build_resnet model).
"""
import re

import numpy as np

from models.mask_rcnn.detector import TORCHVISION_BN_EPSILON, build_mask_rcnn, detector_layers
from models.resnet import build_resnet
from models.convert.torch_reader import (
    chw_to_hwc_permutation, read_state_dict, set_batch_norm, set_conv, set_dense, set_resnet,
)

# The 80 COCO categories (id, name), in id order: contiguous class k is COCO_CATEGORIES[k - 1].
COCO_CATEGORIES = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"),
    (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"),
    (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"),
    (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)
# (dy, dx, dh, dw) <- torchvision's (dx, dy, dw, dh): Keras channel c reads torchvision channel _XY_SWAP[c].
_XY_SWAP = np.array([1, 0, 3, 2])
# Old torchvision key names -> current ones (torchvision's _load_from_state_dict does the same renaming).
_OLD_KEYS = (
    (re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d)\.(weight|bias)$"), r"backbone.fpn.\1_blocks.\2.0.\3"),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
    (re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d)\.(weight|bias)$"),
     lambda m: f"roi_heads.mask_head.{int(m[1]) - 1}.0.{m[2]}"),
)


def _rename_old_keys(state):
    for key in list(state.tensors):
        for pattern, replacement in _OLD_KEYS:
            new = pattern.sub(replacement, key)
            if new != key:
                state.tensors[new] = state.tensors.pop(key)
                break


def _select_outputs(state, prefix, rows):
    """Keeps (and reorders) output channels `rows` of `{prefix}.weight` / `.bias` (axis 0 in PyTorch)."""
    for name in ("weight", "bias"):
        key = f"{prefix}.{name}"
        if key in state:
            state.tensors[key] = state.tensors[key][rows]


def _conv_norm(conv, norm, state, prefix):
    """A torchvision Conv2dNormActivation `{prefix}.0` (conv) and `.1` (BN, when norm is not None)."""
    set_conv(conv, state, f"{prefix}.0")
    if norm is not None:
        set_batch_norm(norm, state, f"{prefix}.1")


def _load_maskrcnn(model, state, variant):
    """Assigns a torchvision Mask R-CNN state dict (91 COCO slots) to a build_mask_rcnn(80, ...) model."""
    v2 = variant == "v2"
    layers = detector_layers(model)
    fpn = layers["fpn"]
    set_resnet(fpn.get_layer("backbone"), state, "backbone.body.")
    for level in range(2, 6):
        for kind, block in (("lateral", "inner"), ("output", "layer")):
            name = f"fpn_{kind}{level}"
            _conv_norm(fpn.get_layer(name), fpn.get_layer(f"{name}_bn") if v2 else None, state,
                       f"backbone.fpn.{block}_blocks.{level - 2}")

    rpn = layers["rpn_head"]
    for i, conv in enumerate(rpn.convs):
        set_conv(conv, state, f"rpn.head.conv.{i}.0")
    set_conv(rpn.objectness, state, "rpn.head.cls_logits")
    anchors = rpn.num_anchors
    _select_outputs(state, "rpn.head.bbox_pred", (4 * np.arange(anchors)[:, None] + _XY_SWAP).ravel())
    set_conv(rpn.deltas, state, "rpn.head.bbox_pred")

    box = layers["box_head"]
    channels, size = fpn.output["P2"].shape[-1], layers["box_roi_align"].output_size
    if v2:
        for i, (conv, norm) in enumerate(zip(box.convs, box.norms)):
            _conv_norm(conv, norm, state, f"roi_heads.box_head.{i}")
        channels, fc_keys = box.conv_channels, ["roi_heads.box_head.5"]
    else:
        fc_keys = ["roi_heads.box_head.fc6", "roi_heads.box_head.fc7"]
    for i, (fc, key) in enumerate(zip(box.fcs, fc_keys)):
        set_dense(fc, state, key, input_permutation=chw_to_hwc_permutation(channels, size, size) if i == 0 else None)
    slots = np.array([0] + [coco_id for coco_id, _ in COCO_CATEGORIES])  # Keras class k <- torchvision slot
    _select_outputs(state, "roi_heads.box_predictor.cls_score", slots)
    set_dense(box.class_logits, state, "roi_heads.box_predictor.cls_score")
    _select_outputs(state, "roi_heads.box_predictor.bbox_pred", (4 * slots[:, None] + _XY_SWAP).ravel())
    set_dense(box.box_deltas, state, "roi_heads.box_predictor.bbox_pred")

    mask = layers["mask_head"]
    for i, conv in enumerate(mask.convs):
        _conv_norm(conv, mask.norms[i] if v2 else None, state, f"roi_heads.mask_head.{i}")
    set_conv(mask.upsample, state, "roi_heads.mask_predictor.conv5_mask")
    _select_outputs(state, "roi_heads.mask_predictor.mask_fcn_logits", slots)
    set_conv(mask.predict, state, "roi_heads.mask_predictor.mask_fcn_logits")


def convert_maskrcnn(in_path, *, variant="v1", progress=None):
    """torchvision maskrcnn_resnet50_fpn (variant "v1") or _v2 ("v2") state dict -> a build_mask_rcnn model.

    Raises models.convert.torch_reader.CheckpointMismatch (missing / unexpected keys
    listed) for a checkpoint of another model. models.convert saves the result.
    progress: a data.progress.Progress over the tensors assigned (None: shown on stderr).
    """
    state, _ = read_state_dict(in_path, progress=progress)
    _rename_old_keys(state)
    model = build_mask_rcnn(len(COCO_CATEGORIES), variant=variant,
                            category_ids=[c for c, _ in COCO_CATEGORIES], category_names=[n for _, n in COCO_CATEGORIES])
    _load_maskrcnn(model, state, variant)
    state.check_all_used()
    return model


def convert_maskrcnn_v2(in_path, *, progress=None):
    """torchvision maskrcnn_resnet50_fpn_v2 state dict -> a build_mask_rcnn(variant="v2") model."""
    return convert_maskrcnn(in_path, variant="v2", progress=progress)


def convert_resnet50(in_path, *, progress=None):
    """torchvision's ImageNet ResNet-50 state dict -> the detector's backbone, a build_resnet model in `out_path`.

    The model: build_resnet(50, stem="standard", stride_on="3x3", bn_epsilon=1e-5,
    output_stride=32) named "backbone" (the name of the detector's backbone
    inside its "fpn" model), images [B, H, W, 3] normalised -> {"C2".."C5"}.
    The classifier (fc.*) is not part of it and is left out. progress: as convert_maskrcnn.
    """
    state, _ = read_state_dict(in_path, progress=progress)
    state.ignore(lambda key: key.startswith("fc."))
    backbone = build_resnet(50, stem="standard", stride_on="3x3", bn_epsilon=TORCHVISION_BN_EPSILON,
                            output_stride=32, name="backbone")
    set_resnet(backbone, state, "")
    state.check_all_used()
    return backbone

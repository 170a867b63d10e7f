"""A randomised torchvision Mask R-CNN, its state dict and its intermediate outputs: the converter tests' reference.

Random weights are made to exercise every conversion and to give detections:
- every BatchNorm gets random statistics and affine parameters (weights=None
  builds plain BatchNorm2d; the model is put in eval()), so their conversion
  (and the backbone's frozen-BN inference) is checked. Purely random
  statistics make the activations grow ~300-fold through the ResNet, so the
  statistics are first those of the photo itself (one pass in training mode
  with momentum 1), then perturbed at random;
- the RPN's last layers are scaled up (torchvision initialises them at std
  0.01, which makes every proposal an anchor with objectness 0.5);
- the class layer is scaled up so that some classes score above the 0.05
  threshold, and the 11 unused COCO slots get a bias of -30: the converted
  model drops those slots, which is exact only when their softmax share is
  negligible (as it is in the published weights).
"""
import numpy as np
import torch
import torchvision
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.rpn import concat_box_prediction_layers

UNUSED_COCO_SLOTS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)


def grace_hopper():
    """matplotlib's sample photo: [600, 512, 3] uint8 RGB."""
    import matplotlib.cbook
    from PIL import Image

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as image:
        return np.asarray(image.convert("RGB"))


def _image_tensor(image):
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0


@torch.no_grad()
def randomised_maskrcnn(image, variant="v1", *, seed=0, min_size=800, max_size=1333, rpn_scale=1.0,
                        class_scale=0.2):
    """torchvision maskrcnn_resnet50_fpn(_v2) in eval mode with randomised weights (see the module docstring).

    image: [h, w, 3] uint8, the photo whose statistics calibrate the BatchNorms.
    """
    torch.manual_seed(seed)
    builder = maskrcnn_resnet50_fpn_v2 if variant == "v2" else maskrcnn_resnet50_fpn
    model = builder(weights=None, weights_backbone=None, min_size=min_size, max_size=max_size).eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = 1.0  # running statistics := this batch's
        norm.train()
    images, _ = model.transform([_image_tensor(image)])
    features = model.backbone(images.tensors)
    if variant == "v2":  # the head BNs see the RPN's proposals: calibrate them on those
        proposals = model.rpn(images, features)[0]
        model.roi_heads(features, proposals, images.image_sizes)
    for norm in norms:
        norm.eval()
        n = norm.num_features
        norm.running_mean.add_(0.1 * norm.running_var.sqrt() * torch.randn(n))
        norm.running_var.mul_(0.8 + 0.4 * torch.rand(n))
        norm.weight.copy_(0.5 + torch.rand(n))
        norm.bias.copy_(0.1 * torch.randn(n))
    head = model.rpn.head
    head.cls_logits.weight.mul_(rpn_scale)
    head.bbox_pred.weight.mul_(rpn_scale / 3)
    predictor = model.roi_heads.box_predictor
    predictor.cls_score.weight.mul_(class_scale)
    predictor.cls_score.bias[list(UNUSED_COCO_SLOTS)] = -30.0
    predictor.bbox_pred.weight.mul_(class_scale)
    return model


def to_yxyx(boxes):
    """torch [N, 4] (x1, y1, x2, y2) -> NumPy (y1, x1, y2, x2)."""
    return boxes.detach().numpy()[:, [1, 0, 3, 2]]


@torch.no_grad()
def reference_outputs(model, image):
    """torchvision's intermediate and final outputs on one [h, w, 3] uint8 image (NumPy, our box order)."""
    images, _ = model.transform([_image_tensor(image)])
    features = model.backbone(images.tensors)
    levels = list(features.values())
    objectness, deltas = model.rpn.head(levels)
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    anchors = model.rpn.anchor_generator(images, levels)[0]
    proposals = model.rpn(images, features)[0][0]
    box_features = model.roi_heads.box_head(model.roi_heads.box_roi_pool(features, [proposals], images.image_sizes))
    class_logits, box_regression = model.roi_heads.box_predictor(box_features)
    detections = model.roi_heads(features, [proposals], images.image_sizes)[0][0]
    pasted = model.transform.postprocess([dict(detections)], images.image_sizes, [image.shape[:2]])[0]
    return {
        "images": images.tensors.permute(0, 2, 3, 1).numpy(), "image_size": tuple(images.image_sizes[0]),
        "features": {f"P{k + 2}": f.permute(0, 2, 3, 1).numpy() for k, f in enumerate(levels)},
        "objectness": objectness.numpy()[:, 0], "rpn_deltas": deltas.numpy(), "anchors": to_yxyx(anchors),
        "proposals": to_yxyx(proposals), "class_logits": class_logits.numpy(),
        "box_regression": box_regression.numpy(), "boxes": to_yxyx(detections["boxes"]),
        "labels": detections["labels"].numpy(), "scores": detections["scores"].numpy(),
        "mask_probs": detections["masks"].numpy()[:, 0], "pasted_boxes": to_yxyx(pasted["boxes"]),
        "pasted_probs": pasted["masks"].numpy()[:, 0],
    }

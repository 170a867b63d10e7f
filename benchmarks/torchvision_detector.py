"""torchvision's maskrcnn_resnet50_fpn, the reference side of the detector benchmark.

TensorFlow is not imported here, so a memory probe of torchvision alone
(benchmarks.memory) carries no TensorFlow runtime. In a process that uses
both, torchvision must be imported before TensorFlow (torchvision loads triton,
which segfaults after TensorFlow with torch 2.14 / TF 2.21): benchmarks/__main__.py
does so.
"""
import numpy as np
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from tests.models.mask_rcnn.torchvision_maskrcnn import randomised_maskrcnn


def save_randomised(image, path):
    """Writes the state dict of a randomised maskrcnn_resnet50_fpn (min 800, max 1333) calibrated on `image`
    ([h, w, 3] uint8; tests/models/mask_rcnn/torchvision_maskrcnn.py says how: about 100 detections on the photo)."""
    torch.save(randomised_maskrcnn(image).state_dict(), path)


def load(path):
    """maskrcnn_resnet50_fpn in eval mode with the weights in `path` (torchvision's 800 / 1333 transform)."""
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def image_tensor(image):
    """[h, w, 3] uint8 -> [3, h, w] float32 in 0..1, torchvision's detection input."""
    return torch.from_numpy(np.array(image, np.uint8)).permute(2, 0, 1).float() / 255.0


@torch.no_grad()
def detect(model, image):
    """What a torchvision user calls: transform + network + masks pasted into the photo. -> one output dict."""
    return model([image_tensor(image)])[0]


@torch.no_grad()
def transformed(model, image):
    """The network's input: torchvision's transform (resize, normalise, pad) of one photo."""
    images, _ = model.transform([image_tensor(image)])
    return images


@torch.no_grad()
def network(model, images):
    """The network alone on transformed images (backbone + FPN, RPN, RoI heads; no transform, no pasting)."""
    features = model.backbone(images.tensors)
    proposals, _ = model.rpn(images, features)
    detections, _ = model.roi_heads(features, proposals, images.image_sizes)
    return detections


def load_for_training(path):
    """maskrcnn_resnet50_fpn as torchvision fine-tunes it, in train mode, with the weights in `path`.

    torchvision's defaults for a pretrained model: FrozenBatchNorm2d and
    trainable_backbone_layers=3 (the stem and layer1 frozen); 2000 RPN
    proposals per image in training, 512 sampled RoIs. maskrcnn_resnet50_fpn
    itself gives those only with downloaded weights (without, it trains all
    five stages with BatchNorm2d), so the model is assembled as it does.
    """
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), trainable_layers=3)
    model = MaskRCNN(backbone, num_classes=91)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.train()


def sgd(model, learning_rate):
    """SGD with momentum 0.9 and weight decay 1e-4 (torchvision's detection recipe) on the trainable parameters."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(parameters, lr=learning_rate, momentum=0.9, weight_decay=1e-4)


def training_inputs(images, truth):
    """torchvision's training inputs: a list of [3, h, w] images and a list of target dicts.

    images: list of [h, w, 3] uint8; truth: benchmarks.detector.ground_truth's dict (boxes y1, x1, y2, x2).
    Targets: boxes [N, 4] (x1, y1, x2, y2), labels [N] int64, masks [N, h, w] uint8 (full-image masks).
    """
    boxes = torch.from_numpy(truth["boxes"][:, [1, 0, 3, 2]].copy())
    target = {"boxes": boxes, "labels": torch.from_numpy(truth["class_ids"].astype(np.int64)),
              "masks": torch.from_numpy(truth["full_masks"].astype(np.uint8))}
    return [image_tensor(image) for image in images], [dict(target) for _ in images]


def train_step(model, optimizer, images, targets):
    """One SGD step on the sum of the five losses. -> the loss (float)."""
    losses = model(images, targets)
    loss = sum(losses.values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())

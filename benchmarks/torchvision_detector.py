"""torchvision's maskrcnn_resnet50_fpn, the reference side of the detector benchmark.

TensorFlow is not imported here, so a memory probe of torchvision alone
(benchmarks.memory) carries no TensorFlow runtime. In a process that uses
both, torchvision must be imported before TensorFlow (see COMMON.md):
benchmarks/__main__.py does so.
"""
import numpy as np
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from tests.models.torchvision_maskrcnn import randomised_maskrcnn


def save_randomised(image, path):
    """Writes the state dict of a randomised maskrcnn_resnet50_fpn (min 800, max 1333) calibrated on `image`
    ([h, w, 3] uint8; tests/models/torchvision_maskrcnn.py says how: about 100 detections on the photo)."""
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

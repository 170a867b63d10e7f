"""A few Cityscapes-layout files written directly with PIL, for CLI tests that must not depend on the sample generator,
and the scores counted from label arrays that evaluations are checked against."""
import os

import numpy as np
from PIL import Image

# labelIds of evaluated classes (road 7, sidewalk 8, building 11, vegetation 21, sky 23, car 26)
# and void ones (0 unlabeled, 1 ego vehicle, 4 static).
EVAL_IDS = [7, 8, 11, 21, 23, 26]
VOID_IDS = [0, 1, 4]


def write_split(root, split, *, num_images=2, size=(48, 64), seed=0):
    """Writes leftImg8bit/<split>/testcity/... and gtFine/... _labelIds.png; returns [(id, labelIds array)]."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num_images):
        example_id = f"testcity_{i:06d}_000019"
        blocks = rng.choice(EVAL_IDS + VOID_IDS, size=(size[0] // 8, size[1] // 8), p=[0.14] * 6 + [0.16 / 3] * 3)
        label_ids = np.kron(blocks, np.ones((8, 8), int)).astype(np.uint8)
        image = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
        image_dir = os.path.join(root, "leftImg8bit", split, "testcity")
        label_dir = os.path.join(root, "gtFine", split, "testcity")
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        Image.fromarray(image).save(os.path.join(image_dir, f"{example_id}_leftImg8bit.png"))
        Image.fromarray(label_ids).save(os.path.join(label_dir, f"{example_id}_gtFine_labelIds.png"))
        out.append((example_id, label_ids))
    return out


def official_train_ids(num_classes=19):
    """labelId -> trainId lookup (256 entries, 255 = ignore) from cityscapesScripts' own table."""
    from cityscapesscripts.helpers.labels import labels

    table = np.full(256, 255)
    for label in labels:
        if 0 <= label.id < 256 and 0 <= label.trainId < num_classes:
            table[label.id] = label.trainId
    return table


def reference_scores(gt, pred, num_classes):
    """Per-class IoU [num_classes] (NaN for a class in neither), pixel accuracy and mean class accuracy of
    trainId arrays of one shape, by per-class TP/FP/FN boolean masks (no confusion matrix); gt 255 skipped."""
    keep = gt != 255
    gt, pred = gt[keep], pred[keep]
    ious = []
    for c in range(num_classes):
        tp = np.sum((gt == c) & (pred == c))
        fp = np.sum((gt != c) & (pred == c))
        fn = np.sum((gt == c) & (pred != c))
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
    acc = [np.mean(pred[gt == c] == c) for c in range(num_classes) if np.any(gt == c)]
    return np.array(ious), float(np.mean(gt == pred)), float(np.mean(acc))

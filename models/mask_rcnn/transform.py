"""Photos in, detections in the photos' own pixels out: torchvision's GeneralizedRCNNTransform around the model.

preprocess: each RGB image is scaled so its short side is min_size unless its
long side would pass max_size (torchvision's rule: scale computed in float32,
size floor(side * scale)), resized bilinearly (half-pixel centres, no
antialiasing, as F.interpolate(align_corners=False)), normalised with the
ImageNet mean / std (models.resnet.INPUT_MEAN / INPUT_STD on 0..255, the same
as torchvision's on 0..1), and zero-padded at the bottom and right to the
batch's largest size rounded up to a multiple of size_divisible.
(data/coco.py's training pipeline rounds the resized size instead of flooring
it: a pixel at most.)

detect: preprocess -> model -> boxes scaled back by original / resized size
per axis (torchvision's ratios) -> masks pasted into the original image
(models.mask_rcnn.inference.paste_masks).
"""
import weakref

import numpy as np
import tensorflow as tf

from models.mask_rcnn.inference import paste_masks
from models.resnet import INPUT_MEAN, INPUT_STD


def resized_size(height, width, min_size=800, max_size=1333):
    """(height, width) after torchvision's resize rule: Python ints in, ints out."""
    short, long = np.float32(min(height, width)), np.float32(max(height, width))
    scale = min(np.float32(min_size) / short, np.float32(max_size) / long)  # float32, as torchvision
    return int(np.floor(height * float(scale))), int(np.floor(width * float(scale)))


def preprocess(images, *, min_size=800, max_size=1333, size_divisible=32):
    """A list of RGB images -> the detector's inputs.

    images: list of [h, w, 3] uint8 (or float 0..255) arrays or tensors, any sizes.
    Returns {"images": [B, H, W, 3] float32 (normalised, zero-padded),
    "image_sizes": [B, 2] int32 (resized, before padding),
    "original_sizes": [B, 2] int32}.
    """
    resized, sizes, originals = [], [], []
    for image in images:
        image = tf.convert_to_tensor(image)
        height, width = int(image.shape[0]), int(image.shape[1])
        size = resized_size(height, width, min_size, max_size)
        pixels = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=False)
        resized.append((pixels - INPUT_MEAN) / INPUT_STD)
        sizes.append(size)
        originals.append((height, width))
    padded = [-(-max(s[axis] for s in sizes) // size_divisible) * size_divisible for axis in (0, 1)]
    batch = tf.stack([tf.pad(x, [[0, padded[0] - s[0]], [0, padded[1] - s[1]], [0, 0]])
                      for x, s in zip(resized, sizes)])
    return {"images": batch, "image_sizes": tf.constant(sizes, tf.int32),
            "original_sizes": tf.constant(originals, tf.int32)}


_GRAPHS = weakref.WeakKeyDictionary()  # model -> its call as one tf.function, made on first use


def _graph(model):
    """The model's inference call as one TensorFlow graph (traced once per model and input shape).

    Called eagerly instead, the detector on one 800 x 1333 photo peaked at
    4.3 GB RSS against 1.5 GB as a graph (BENCHMARKS.md, section 4b), and ran
    slower. Not model.predict_on_batch: Keras's jit_compile="auto" turns XLA on
    where it finds a GPU, and the graph's NMS ops are not meant for XLA (not
    tried on a GPU).
    """
    if model not in _GRAPHS:
        owner = weakref.ref(model)  # the cache must not keep the model alive
        _GRAPHS[model] = tf.function(lambda inputs: owner()(inputs, training=False), reduce_retracing=True)
    return _GRAPHS[model]


def detect(model, images, *, min_size=800, max_size=1333, mask_threshold=0.5, score_threshold=0.0):
    """Detections of each image in its own pixels.

    model: a build_mask_rcnn model (or one loaded from .keras).
    images: list of [h, w, 3] RGB uint8 arrays, any sizes.
    Returns one dict per image: boxes [N, 4] float32 (y1, x1, y2, x2, original
    pixels), class_ids [N] int32 (1..K), category_ids [N] int32 (the dataset's
    ids, e.g. COCO's), scores [N] float32 (decreasing), masks PastedMasks of
    N masks at the original size (.dense() [N, h, w] bool, .rle() COCO RLEs),
    mask probability >= mask_threshold. Only detections scoring at least
    score_threshold are returned (the model itself keeps those above its own,
    0.05 by default).
    """
    inputs = preprocess(images, min_size=min_size, max_size=max_size)
    outputs = run_graph(model, inputs["images"], inputs["image_sizes"])
    return [in_original_pixels(outputs, b, resized, original, score_threshold=score_threshold,
                               mask_threshold=mask_threshold)
            for b, (resized, original) in enumerate(zip(inputs["image_sizes"].numpy(),
                                                        inputs["original_sizes"].numpy()))]


def run_graph(model, images, image_sizes):
    """The detector's outputs (NumPy) on a preprocessed batch, run as one cached graph (see _graph)."""
    outputs = _graph(model)({"images": images, "image_sizes": image_sizes})
    return {k: np.asarray(v) for k, v in outputs.items()}


def in_original_pixels(outputs, b, resized_size, original_size, *, score_threshold=0.0, mask_threshold=0.5):
    """Image b's detections from the model's batch outputs, in its original pixels (one dict, as detect returns).

    resized_size, original_size: (height, width) of the image as the model saw it (before padding) and as
    it was read. Masks are pasted as torchvision pastes them (box grown by one mask cell, whole pixels),
    the convention the converted weights were trained and evaluated with.
    """
    # Scores decrease: the kept detections are a prefix.
    n = int(np.sum(outputs["scores"][b, :int(outputs["num_detections"][b])] >= score_threshold))
    ratio = np.asarray(original_size, np.float32) / np.asarray(resized_size, np.float32)  # float32 as torchvision
    boxes = outputs["boxes"][b, :n] * np.tile(ratio, 2)
    return {"boxes": boxes, "class_ids": outputs["class_ids"][b, :n], "category_ids": outputs["category_ids"][b, :n],
            "scores": outputs["scores"][b, :n],
            "masks": paste_masks(outputs["masks"][b, :n], boxes, tuple(int(s) for s in original_size),
                                 mask_threshold, torchvision_compatible=True)}

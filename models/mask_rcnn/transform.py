"""Images in, detections in the images' own pixels out: torchvision's GeneralizedRCNNTransform around the model.

detector_inputs / resize_normalize_pad: the one way images become the
detector's input, for photos (preprocess) and for data.coco batches alike, in
the graph: each uint8 RGB image is resized to its target size
(data.coco.resized_size, torchvision's rule: the short side to min_size unless
the long side would pass max_size, sizes floored) bilinearly (half-pixel
centres, no antialiasing, as F.interpolate(align_corners=False)), then
normalised with the ImageNet mean / std (data.normalization
on 0..255, the same as torchvision's on 0..1), and zero-padded at the bottom
and right to the batch's largest size rounded up to a multiple of
size_divisible.

detect: preprocess -> model -> boxes scaled back by original / resized size
per axis (torchvision's ratios) -> masks pasted into the original image
(models.mask_rcnn.paste.paste_masks).
"""
import weakref

import numpy as np
import tensorflow as tf

from data.coco.pipeline import resized_size
from data.normalization import normalize
from models.mask_rcnn.paste import paste_masks


def resize_normalize_pad(images, decoded_sizes, image_sizes, *, size_divisible=32):
    """A batch of decoded images -> the detector's "images" input, in TensorFlow ops (any shapes, any graph).

    images: [B, Hd, Wd, 3] uint8 (or float in 0..255) RGB; image b is
        images[b, :decoded_sizes[b, 0], :decoded_sizes[b, 1]], anything beyond is ignored.
    decoded_sizes, image_sizes: [B, 2] int, (height, width) as decoded and as resized.
    Returns [B, H, W, 3] float32: image b resized to image_sizes[b], normalised,
    zeros beyond it; H, W = the largest image_sizes rounded up to size_divisible.
    """
    decoded_sizes = tf.cast(decoded_sizes, tf.int32)
    image_sizes = tf.cast(image_sizes, tf.int32)
    padded = -(-tf.reduce_max(image_sizes, axis=0) // size_divisible) * size_divisible

    def one(args):
        image, decoded, size = args
        return resize_normalize_pad_equal(image[:decoded[0], :decoded[1]], size, padded)

    # One image at a time: each has its own size. The loop runs in the graph (no Python per image).
    return tf.map_fn(one, (images, decoded_sizes, image_sizes),
                     fn_output_signature=tf.TensorSpec([None, None, 3], tf.float32))



def resize_normalize_pad_equal(images, size, padded_size):
    """Images of one size -> resized to `size` (bilinear, half-pixel centres, no antialiasing), normalised and
    zero-padded at the bottom and right to padded_size: the per-image step of resize_normalize_pad.

    images: [h, w, 3] or [N, h, w, 3] uint8 (or float in 0..255) RGB; size, padded_size: (height, width) ints.
    Returns [H, W, 3] or [N, H, W, 3] float32, (H, W) = padded_size. No tf.map_fn: an exported graph
    (models/export) calls this directly on one image or a batch of equal sizes.
    """
    # Cast first: the same values (ResizeBilinear reads uint8 as float), and tf2onnx would give the resize of a
    # uint8 image a uint8 output (ONNX Resize keeps its input's type; TensorFlow's gives float32).
    pixels = tf.image.resize(tf.cast(images, tf.float32), size, method="bilinear", antialias=False)
    pixels = normalize(pixels)  # resized, then normalised: torchvision's order
    batch_axes = [[0, 0]] * (images.shape.rank - 3)
    return tf.pad(pixels, batch_axes + [[0, padded_size[0] - size[0]], [0, padded_size[1] - size[1]], [0, 0]])


def detector_inputs(batch, *, size_divisible=32):
    """A data.coco.make_dataset batch -> the detector's inputs {"images": [B, H, W, 3] float32 (resize_normalize_pad),
    "image_sizes": [B, 2] int32 (the batch's image_size)}.

    A batch that holds them already passes through: an XLA-compiled training
    step (jit_compile=True) cannot resize to sizes that are tensor values, so
    there the transform runs in tf.data instead:
    dataset.map(lambda batch: {**batch, **detector_inputs(batch)}).
    """
    if "images" in batch:
        return {"images": batch["images"], "image_sizes": tf.cast(batch["image_sizes"], tf.int32)}
    image_sizes = tf.cast(batch["image_size"], tf.int32)
    return {"images": resize_normalize_pad(batch["image"], batch["original_size"], image_sizes,
                                           size_divisible=size_divisible),
            "image_sizes": image_sizes}


def preprocess(images, *, min_size=800, max_size=1333, size_divisible=32):
    """A list of RGB images -> the detector's inputs (resize_normalize_pad at data.coco.resized_size's sizes).

    images: list of [h, w, 3] uint8 (or float 0..255) arrays or tensors, any sizes.
    Returns {"images": [B, H, W, 3] float32 (normalised, zero-padded),
    "image_sizes": [B, 2] int32 (resized, before padding),
    "original_sizes": [B, 2] int32}.
    """
    images = [tf.convert_to_tensor(image) for image in images]
    dtype = images[0].dtype if all(image.dtype == images[0].dtype for image in images) else tf.float32
    originals = tf.constant([image.shape[:2] for image in images], tf.int32)
    sizes = tf.stack(resized_size(originals[:, 0], originals[:, 1], min_size, max_size), axis=1)
    largest = tf.reduce_max(originals, axis=0)
    batch = tf.stack([tf.pad(tf.cast(image, dtype), [[0, largest[0] - image.shape[0]],
                                                    [0, largest[1] - image.shape[1]], [0, 0]])
                      for image in images])
    return {"images": resize_normalize_pad(batch, originals, sizes, size_divisible=size_divisible),
            "image_sizes": sizes, "original_sizes": originals}


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


def in_original_pixels(outputs, b, resized_size, original_size, *, score_threshold=0.0, mask_threshold=0.5,
                       mask_above=False):
    """Image b's detections from the model's batch outputs, in its original pixels (one dict, as detect returns).

    resized_size, original_size: (height, width) of the image as the model saw it (before padding) and as
    it was read. Masks are pasted as torchvision pastes them (box grown by one mask cell, whole pixels),
    the convention the converted weights were trained and evaluated with. mask_above: a pixel is on iff its
    probability > mask_threshold (torchvision's coco_eval.py), else >= (paste_masks' above).
    """
    # Scores decrease: the kept detections are a prefix.
    n = int(np.sum(outputs["scores"][b, :int(outputs["num_detections"][b])] >= score_threshold))
    ratio = np.asarray(original_size, np.float32) / np.asarray(resized_size, np.float32)  # float32 as torchvision
    boxes = outputs["boxes"][b, :n] * np.tile(ratio, 2)
    return {"boxes": boxes, "class_ids": outputs["class_ids"][b, :n], "category_ids": outputs["category_ids"][b, :n],
            "scores": outputs["scores"][b, :n],
            "masks": paste_masks(outputs["masks"][b, :n], boxes, tuple(int(s) for s in original_size),
                                 mask_threshold, torchvision_compatible=True, above=mask_above)}

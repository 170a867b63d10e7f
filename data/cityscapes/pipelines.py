"""Cityscapes elements -> model inputs: the PSPNet training recipe's augmentation, and full-image evaluation.

train_pipeline yields (image float32 [B, h, w, 3] normalised, label int32 [B, h, w] trainIds) for `fit`;
eval_pipeline keeps full images and their ids. Elements come from data.cityscapes.readers.
"""
import functools

import tensorflow as tf

from data.cityscapes.augment import random_gaussian_blur, random_scale_flip_crop
from data.cityscapes.labels import IGNORE_LABEL, to_train_ids
from data.normalization import INPUT_MEAN, normalize


def train_pipeline(dataset, *, batch_size, crop_size=(713, 713), scale_range=(0.5, 2.0), seed=None,
                   rotation_degrees=10.0, blur_prob=0.5, shuffle_buffer=0, cache=False,
                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=None):
    """Decoded elements -> augmented training batches, the PSPNet (semseg) recipe.

    Each image is scaled by s ~ U[scale_range], rotated by U[-rotation_degrees,
    rotation_degrees] with probability 1/2, blurred (5x5 Gaussian, as OpenCV)
    with probability blur_prob, mirrored with probability 1/2, padded to
    crop_size (mean colour / ignore label) and cropped at a random position,
    then normalized; `random_scale_flip_crop` does the geometry in one
    resampling of the crop only, and XLA compiles the per-image work into a
    few passes over the crop (once per image size; expect a second or two of
    compiling on the first batch). rotation_degrees=0 and blur_prob=0 turn those
    steps off. The same seed gives the same batches; each pass over the dataset
    draws new augmentations.

    Options:
      shuffle_buffer: >0 shuffles the decoded elements (after the cache, so a
        cached dataset is reshuffled every pass). The readers already shuffle
        their files when asked (read_folder(shuffle=True): all files every
        pass; read_tfds: files plus a buffer); that shuffle is frozen by
        `cache` after the first pass, which this one is not.
      cache: True keeps the decoded elements in memory (False: decode every
        pass; a string: a cache file prefix). Augmentation always runs after it.
      num_parallel_calls: parallel augmentation calls (default AUTOTUNE).
      deterministic: False lets parallel calls deliver out of order (faster
        when images differ in cost); each element keeps its own random draws.
        None keeps tf.data's default (ordered).

    Returns a dataset of (image float32 [B, h, w, 3], label int32 [B, h, w]
    trainIds with 255 = ignore), (h, w) = crop_size, incomplete batches dropped.
    """
    if not 0 < scale_range[0] <= scale_range[1]:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    if not 0 <= blur_prob <= 1:
        raise ValueError(f"blur_prob must lie in [0, 1], got {blur_prob}")
    if rotation_degrees < 0:
        raise ValueError(f"rotation_degrees must be >= 0, got {rotation_degrees}")
    crop_size = tuple(int(v) for v in crop_size)
    if cache:
        dataset = dataset.cache("" if cache is True else cache)
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    augment_crop = _augment_crop_fn(crop_size, tuple(float(v) for v in scale_range), float(rotation_degrees),
                                    float(blur_prob))

    def prepare(element, element_seed):
        return augment_crop(element["image"], element["label"], element_seed)

    dataset = (
        tf.data.Dataset.zip(dataset, seeds)
        .map(prepare, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    if deterministic is not None:
        options = tf.data.Options()
        options.deterministic = deterministic
        dataset = dataset.with_options(options)
    return dataset


@functools.lru_cache(maxsize=None)
def _augment_crop_fn(crop_size, scale_range, rotation_degrees, blur_prob):
    """The per-element training augmentation as one XLA-compiled function.

    XLA fuses the per-crop work (gathers, blur, normalization, trainId lookup)
    into a few passes over the crop. It compiles once per image size; the cache
    shares the compiled function between pipelines with the same recipe.
    Returns fn(image uint8 [H, W, 3], labelIds uint8 [H, W], seed [2] int64) ->
    (image float32 [h, w, 3] normalized, label int32 [h, w] trainIds).
    """

    @tf.function(jit_compile=True)
    def augment_crop(image, label_ids, seed):
        # Geometry on the raw uint8 image and labelIds: only the crop is
        # resampled, normalized and converted to trainIds. The fill is the
        # mean colour, which normalizes to 0, and labelId 255, which is trainId 255.
        image, label_ids = random_scale_flip_crop(
            image,
            label_ids,
            seed,
            crop_size=crop_size,
            scale_range=scale_range,
            label_fill=IGNORE_LABEL,
            rotation_degrees=rotation_degrees,
            image_fill=INPUT_MEAN,
        )
        blur_seed = tf.random.experimental.stateless_fold_in(seed, 1)
        image = random_gaussian_blur(image, blur_seed, prob=blur_prob)
        return normalize(image), tf.cast(to_train_ids(label_ids), tf.int32)

    return augment_crop


def eval_pipeline(dataset, *, batch_size=1):
    """Decoded elements -> full-size evaluation batches.

    Returns a dataset of {"image": float32 [B, H, W, 3] normalized,
    "label": int32 [B, H, W] trainIds (only if the elements have labels),
    "id": string [B]}. Batching needs all images the same size.
    """

    def prepare(element):
        prepared = {"id": element["id"], "image": normalize(element["image"])}
        if "label" in element:
            prepared["label"] = tf.cast(to_train_ids(element["label"]), tf.int32)
        return prepared

    return (
        dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )

"""Cityscapes (fine annotations): label table, readers, tf.data pipelines.

Two readers give the same elements, so everything downstream is shared:

    read_folder(root, split)   the official folders, as unpacked from
                               leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip:
        root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
        root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
                               (listed and checked by data.cityscapes_files.find_examples)
    read_tfds(split, ...)      TFDS `cityscapes/semantic_segmentation`, built
                               offline from those two zips.

    element = {"image": uint8 [H, W, 3] RGB,
               "label": uint8 [H, W] labelIds (raw, as on disk; absent if with_labels=False),
               "id":    string [] "<city>_<seq>_<frame>"}

The pipelines turn these into model inputs: `train_pipeline` applies the PSPNet
recipe (random scale 0.5-2, rotation +-10 degrees, blur, mirror, pad, 713x713
crop) and yields
`(image float32 [B, h, w, 3], label int32 [B, h, w] trainIds)` for `fit`;
`eval_pipeline` keeps full images and ids for the benchmark-style evaluation.
Labels use trainIds 0..18 with 255 = ignore; predictions go back to labelIds
with `to_label_ids` because the official evaluator reads labelIds.

With tf.distribute, build the input per worker so files are sharded before
decoding and each worker draws different augmentations:

    def dataset_fn(ctx):
        examples = read_folder(root, "train", shuffle=True, seed=seed, input_context=ctx)
        return train_pipeline(examples, batch_size=ctx.get_per_replica_batch_size(global_batch),
                              seed=seed + ctx.input_pipeline_id)
    dataset = strategy.distribute_datasets_from_function(dataset_fn)
"""
import collections
import functools
import sys

import numpy as np
import tensorflow as tf

from data import augment
from data.augment import normalize_image  # noqa: F401  (part of this module's API)
from data.cityscapes_files import Example, explain_decode_error, find_examples  # noqa: F401  (this module's API)
from models.resnet import INPUT_MEAN, INPUT_STD

IGNORE_LABEL = 255

# The official table (cityscapesscripts/helpers/labels.py): name, labelId,
# trainId (255 = not trained on, -1 = not in the benchmark), RGB colour.
Label = collections.namedtuple("Label", ["name", "id", "train_id", "color"])
LABELS = (
    Label("unlabeled", 0, 255, (0, 0, 0)),
    Label("ego vehicle", 1, 255, (0, 0, 0)),
    Label("rectification border", 2, 255, (0, 0, 0)),
    Label("out of roi", 3, 255, (0, 0, 0)),
    Label("static", 4, 255, (0, 0, 0)),
    Label("dynamic", 5, 255, (111, 74, 0)),
    Label("ground", 6, 255, (81, 0, 81)),
    Label("road", 7, 0, (128, 64, 128)),
    Label("sidewalk", 8, 1, (244, 35, 232)),
    Label("parking", 9, 255, (250, 170, 160)),
    Label("rail track", 10, 255, (230, 150, 140)),
    Label("building", 11, 2, (70, 70, 70)),
    Label("wall", 12, 3, (102, 102, 156)),
    Label("fence", 13, 4, (190, 153, 153)),
    Label("guard rail", 14, 255, (180, 165, 180)),
    Label("bridge", 15, 255, (150, 100, 100)),
    Label("tunnel", 16, 255, (150, 120, 90)),
    Label("pole", 17, 5, (153, 153, 153)),
    Label("polegroup", 18, 255, (153, 153, 153)),
    Label("traffic light", 19, 6, (250, 170, 30)),
    Label("traffic sign", 20, 7, (220, 220, 0)),
    Label("vegetation", 21, 8, (107, 142, 35)),
    Label("terrain", 22, 9, (152, 251, 152)),
    Label("sky", 23, 10, (70, 130, 180)),
    Label("person", 24, 11, (220, 20, 60)),
    Label("rider", 25, 12, (255, 0, 0)),
    Label("car", 26, 13, (0, 0, 142)),
    Label("truck", 27, 14, (0, 0, 70)),
    Label("bus", 28, 15, (0, 60, 100)),
    Label("caravan", 29, 255, (0, 0, 90)),
    Label("trailer", 30, 255, (0, 0, 110)),
    Label("train", 31, 16, (0, 80, 100)),
    Label("motorcycle", 32, 17, (0, 0, 230)),
    Label("bicycle", 33, 18, (119, 11, 32)),
    Label("license plate", -1, -1, (0, 0, 142)),
)
_TRAINED = sorted((l for l in LABELS if 0 <= l.train_id < IGNORE_LABEL), key=lambda l: l.train_id)
NUM_CLASSES = len(_TRAINED)  # 19
CLASS_NAMES = tuple(l.name for l in _TRAINED)
# [19, 3] uint8, indexed by trainId: the palette for models.pspnet.inference.colorize.
CLASS_COLORS = np.array([l.color for l in _TRAINED], np.uint8)

# 256-entry lookup tables cover every uint8 value. labelIds without a trainId
# map to ignore; ignore (and any other non-class value) maps back to
# "unlabeled" (0), which the official evaluator treats as void.
_TO_TRAIN_ID = np.full(256, IGNORE_LABEL, np.int32)
_TO_LABEL_ID = np.zeros(256, np.int32)
for _l in _TRAINED:
    _TO_TRAIN_ID[_l.id] = _l.train_id
    _TO_LABEL_ID[_l.train_id] = _l.id

# The models' input normalisation (ImageNet statistics, 0..255 RGB units): defined
# with the models, applied here.
IMAGE_MEAN, IMAGE_STD = INPUT_MEAN, INPUT_STD

# Largest labelId in the table; values above it (up to 255) are not Cityscapes classes.
MAX_LABEL_ID = max(l.id for l in LABELS)

_TFDS_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def _lookup(table, x, outside):
    """table[x] with `outside` where x is not in 0..255; keeps x's type and dtype."""
    if tf.is_tensor(x):
        index = tf.cast(x, tf.int32)
        inside = (index >= 0) & (index < len(table))
        values = tf.gather(tf.constant(table), tf.clip_by_value(index, 0, len(table) - 1))
        return tf.cast(tf.where(inside, values, outside), x.dtype)
    x = np.asarray(x)
    inside = (x >= 0) & (x < len(table))
    return np.where(inside, table[np.clip(x, 0, len(table) - 1)], outside).astype(x.dtype)


def to_train_ids(label_ids):
    """labelIds -> trainIds (0..18, 255 for everything not trained on).

    label_ids: NumPy array or tensor, any shape, an integer dtype that holds 255.
    Returns the same kind, shape and dtype.
    """
    return _lookup(_TO_TRAIN_ID, label_ids, IGNORE_LABEL)


def to_label_ids(train_ids):
    """trainIds -> labelIds (255 and any other non-class value -> 0, "unlabeled").

    train_ids: NumPy array or tensor, any shape, integer dtype (e.g. an argmax).
    Returns the same kind, shape and dtype.
    """
    return _lookup(_TO_LABEL_ID, train_ids, 0)


def read_folder(root, split, *, with_labels=True, shuffle=False, seed=None, input_context=None,
                skip_bad=False, skipped=None):
    """The official folder layout as a dataset of decoded elements (see module doc).

    Files are checked (find_examples; skip_bad leaves bad examples out and lists
    them in `skipped`), then
    sharded (input_context: a tf.distribute.InputContext) and shuffled (a full
    reshuffle every epoch) before any image is decoded.
    """
    examples = find_examples(root, split, with_labels, skip_bad=skip_bad, skipped=skipped)
    encoded = {
        "id": [e.id for e in examples],
        "image": [e.image_path for e in examples],
    }
    if with_labels:
        encoded["label"] = [e.label_path for e in examples]
    dataset = tf.data.Dataset.from_tensor_slices(encoded)
    if input_context is not None:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle:
        dataset = dataset.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)

    def read(element):
        encoded = {k: v if k == "id" else tf.io.read_file(v) for k, v in element.items()}
        return _decode(encoded, label_name=element.get("label"))

    return dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE)


def read_tfds(split, *, data_dir=None, manual_dir=None, with_labels=True, shuffle=False, seed=None,
              input_context=None, shuffle_buffer=64):
    """TFDS `cityscapes/semantic_segmentation` as a dataset of decoded elements.

    split: "train", "val" or "test" (TFDS calls val "validation"). The first
    call builds the dataset in data_dir from leftImg8bit_trainvaltest.zip and
    gtFine_trainvaltest.zip in manual_dir. Shuffling mixes TFDS's files, then a
    buffer of `shuffle_buffer` still-encoded examples.
    """
    import tensorflow_datasets as tfds

    if split not in _TFDS_SPLITS:
        raise ValueError(f"split must be one of {sorted(_TFDS_SPLITS)}, got {split!r}")
    try:
        dataset = tfds.load(
            "cityscapes/semantic_segmentation",
            split=_TFDS_SPLITS[split],
            data_dir=data_dir,
            shuffle_files=shuffle,
            # PNGs stay encoded until after sharding and shuffling; _decode
            # then treats them exactly as read_folder's files.
            decoders={"image_left": tfds.decode.SkipDecoding(),
                      "segmentation_label": tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(input_context=input_context, shuffle_seed=seed),
            download_and_prepare_kwargs={
                "download_config": tfds.download.DownloadConfig(manual_dir=manual_dir)
            },
        )
    except AssertionError as error:
        if "download the dataset files manually" not in str(error):
            raise
        raise FileNotFoundError(
            f"{manual_dir}: put leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip "
            "from cityscapes-dataset.com there (they cannot be downloaded automatically)"
        ) from None
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def rename(element):
        renamed = {"id": element["image_id"], "image": element["image_left"]}
        if with_labels:
            renamed["label"] = element["segmentation_label"]
        return renamed

    return dataset.map(rename).map(_decode, num_parallel_calls=tf.data.AUTOTUNE)


def _decode(element, label_name=None):
    """{"id", "image": PNG bytes, "label": PNG bytes} -> the decoded element.

    label_name: string [] naming the label in warnings (its path; default the id).
    Label pixels whose labelId is not in LABELS (34..255) become ignore through
    to_train_ids like every void class; each label holding any gets a one-line
    warning on stderr with their count, so a wrongly encoded label set (trainIds
    or colours saved as labelIds) does not train on "ignore" silently.
    """
    image = tf.io.decode_png(element["image"], channels=3)
    decoded = {"id": element["id"], "image": image}
    if "label" in element:
        label = tf.io.decode_png(element["label"], channels=1)[..., 0]
        size_ok = tf.reduce_all(tf.shape(label) == tf.shape(image)[:2])
        outside = tf.math.count_nonzero(label > MAX_LABEL_ID)
        name = element["id"] if label_name is None else label_name
        with tf.control_dependencies([
            # read_folder checked the sizes from the headers already; TFDS's files only get this check.
            tf.debugging.Assert(size_ok, [tf.strings.join([element["id"], ": label size differs from its image"])]),
            tf.cond(outside > 0, lambda: _warn_outside(name, outside), tf.no_op),
        ]):
            decoded["label"] = tf.identity(label)
    return decoded


def _warn_outside(name, count):
    message = tf.strings.join([
        "warning: ", name, ": ", tf.strings.as_string(count),
        f" label pixels have labelIds outside the Cityscapes table (> {MAX_LABEL_ID}); they are ignored"])
    return tf.print(message, output_stream=sys.stderr)


def train_pipeline(dataset, *, batch_size, crop_size=(713, 713), scale_range=(0.5, 2.0), seed=None,
                   rotation_degrees=10.0, blur_prob=0.5, shuffle_buffer=0, cache=False,
                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=None):
    """Decoded elements -> augmented training batches, the PSPNet (semseg) recipe.

    Each image is scaled by s ~ U[scale_range], rotated by U[-rotation_degrees,
    rotation_degrees] with probability 1/2, blurred (5x5 Gaussian, as OpenCV)
    with probability blur_prob, mirrored with probability 1/2, padded to
    crop_size (mean colour / ignore label) and cropped at a random position,
    then normalized; `augment.random_scale_flip_crop` does the geometry in one
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
        image, label_ids = augment.random_scale_flip_crop(
            image,
            label_ids,
            seed,
            crop_size=crop_size,
            scale_range=scale_range,
            label_fill=IGNORE_LABEL,
            rotation_degrees=rotation_degrees,
            image_fill=IMAGE_MEAN,
        )
        blur_seed = tf.random.experimental.stateless_fold_in(seed, 1)
        image = augment.random_gaussian_blur(image, blur_seed, prob=blur_prob)
        return normalize_image(image), tf.cast(to_train_ids(label_ids), tf.int32)

    return augment_crop


def eval_pipeline(dataset, *, batch_size=1):
    """Decoded elements -> full-size evaluation batches.

    Returns a dataset of {"image": float32 [B, H, W, 3] normalized,
    "label": int32 [B, H, W] trainIds (only if the elements have labels),
    "id": string [B]}. Batching needs all images the same size.
    """

    def prepare(element):
        prepared = {"id": element["id"], "image": normalize_image(element["image"])}
        if "label" in element:
            prepared["label"] = tf.cast(to_train_ids(element["label"]), tf.int32)
        return prepared

    return (
        dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )

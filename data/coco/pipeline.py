"""COCO splits -> tf.data: the split readers (records or in memory) and the training / evaluation pipeline.

Layout read (the official one):

    DATA_DIR/annotations/instances_{train,val}2017.json
    DATA_DIR/{train,val}2017/*.jpg

read_coco converts a split once into TFRecord shards (data.coco.convert; also
`python -m data.coco prepare DATA_DIR`) and reads those (data.coco.records);
read_coco(..., in_memory=True) keeps the whole split in memory instead.

Conventions used by everything that consumes this module:
- Boxes are [y1, x1, y2, x2] float32 in absolute pixels, continuous coordinates
  (pixel (i, j) covers [i, i+1) x [j, j+1)), so COCO's [x, y, w, h] is
  [y, x, y+h, x+w]. In the tf.data elements they are in pixels of the resized
  image; in reader records, of the original image.
- Class ids are contiguous: 0 = background/padding, 1..K for the categories the
  JSON lists, sorted by COCO id (`Categories` maps both ways).
- Instance masks are stored compactly: each instance's mask resampled inside its
  box to mask_size x mask_size (default 56), uint8 0..255 (soft at the edges;
  threshold at 128 for a binary mask). Targets for any RoI are cut from these.
- Images reach the model as decoded: uint8 at the file's own size (flipped when
  training), zero-padded to the batch's largest. The model resizes each to its
  element's image_size (resized_size: the short side to short_side unless the
  long side passes long_side), normalises and pads to /32
  (models.mask_rcnn.transform.detector_inputs), as torchvision's
  GeneralizedRCNNTransform does inside its model: a batch holds 0.9 MB per
  480x640 image instead of a 10 MB float32 800x1066 one.
"""
import contextlib
import dataclasses
import functools
import io
import itertools
import logging

import numpy as np
import tensorflow as tf
from pycocotools.coco import COCO

from data.coco.annotations import load_instances
from data.coco.instances import Categories, check_image_size, empty_drop_counts, image_instances, split_paths

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CocoSplit:
    """One split read into memory.

    records: one dict per image: image_id int, path str, height/width int
        (original size), boxes [N, 4] float32 (original pixels), class_ids [N] int32
        (1..K), masks [N, S, S] uint8 (per-instance crops, see module doc),
        crowd_boxes [C, 4] float32 (iscrowd regions: not targets, ignore regions).
    dropped: counts of what the reader left out, by reason (all keys present).
    """

    coco: COCO
    categories: Categories
    records: list
    dropped: dict
    mask_size: int
    max_instances: int

    def summary(self):
        parts = [f"{len(self.records)} images", f"{sum(len(r['class_ids']) for r in self.records)} instances"]
        parts += [f"{n} {reason.replace('_', ' ')}" for reason, n in self.dropped.items() if n]
        return ", ".join(parts)


def read_coco(data_dir, split, *, mask_size=56, max_instances=100, skip_images_without_annotations=False,
              skip_bad=False, in_memory=False, records_dir=None, progress=None):
    """Read the split DATA_DIR/annotations/instances_{split}2017.json + DATA_DIR/{split}2017/.

    By default through records (data.coco.records.open_coco): the first use
    converts the split once into TFRecord shards (records_dir, default
    DATA_DIR/records/...), later uses open them in well under a second; returns a
    CocoRecords. in_memory=True reads everything into a CocoSplit instead (the
    reference the records are tested against). Both have categories, coco,
    dropped, summary(), records, mask_size, max_instances, and give the same
    make_dataset elements.

    Drops (counted in .dropped and logged,
    never silent): polygon parts with fewer than 3 points (the annotation too when
    no part is left), boxes of zero width or height, instances beyond max_instances
    in one image, and, with skip_images_without_annotations=True, images with no
    usable instance. iscrowd annotations are not instances: they are kept as
    crowd_boxes. Bad input (data.coco.annotations) raises CocoInputError, one line naming
    the file and the id, or with skip_bad=True is skipped and counted.
    progress: the first use's conversion's data.progress.Progress (None: shown on stderr).
    """
    if not in_memory:
        from data.coco.records import open_coco

        return open_coco(data_dir, split, mask_size=mask_size, max_instances=max_instances, skip_bad=skip_bad,
                         skip_images_without_annotations=skip_images_without_annotations, records_dir=records_dir,
                         progress=progress)
    ann_path, image_dir = split_paths(data_dir, split)
    index = load_instances(ann_path, image_dir, skip_bad=skip_bad)
    for image in index.images:
        # The in-memory route does not decode here (tf.data does); the size is checked from the header.
        check_image_size(image)
    categories = Categories.from_index(index)
    dropped = empty_drop_counts()
    dropped.update({f"{kind}_skipped": n for kind, n in index.skipped.items()})
    records = []
    for image in index.images:
        record = image_instances(image, index.annotations[image["id"]], categories, mask_size, dropped)
        for key, counter in (("boxes", "instances_over_max_instances"),
                             ("crowd_boxes", "crowd_regions_over_max_instances")):
            dropped[counter] += max(0, len(record[key]) - max_instances)
        record = dict(record, boxes=record["boxes"][:max_instances], class_ids=record["class_ids"][:max_instances],
                      masks=record["masks"][:max_instances], crowd_boxes=record["crowd_boxes"][:max_instances])
        if not len(record["boxes"]) and skip_images_without_annotations:
            dropped["images_without_annotations_skipped"] += 1
            continue
        records.append(record)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco = COCO()
        coco.dataset = index.document
        coco.createIndex()
    result = CocoSplit(coco, categories, records, dropped, mask_size, max_instances)
    if any(dropped.values()):
        log.warning("%s: %s", ann_path, result.summary())
    return result


def resized_size(height, width, short_side=800, long_side=1333):
    """Size after scaling so the short side is short_side unless the long side would pass long_side.

    torchvision's rule exactly (GeneralizedRCNNTransform in eager mode): scale =
    min(short_side / short, long_side / long) and size = floor(side * scale), all
    in float64 as Python computes them (a float32 scale gives 799 for 480x640
    where torchvision gives 800; a float32 product 1333 for 100x298 where it gives
    1332). The one resize rule of the project: the COCO pipeline's targets and
    models.mask_rcnn.transform both use it.
    height, width: Python ints or int tensors of any shape (e.g. [B]).
    Returns (new_height, new_width) int32 tensors of that shape.
    """
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    scale = tf.minimum(short_side / tf.minimum(h, w), long_side / tf.maximum(h, w))
    return tf.cast(tf.floor(h * scale), tf.int32), tf.cast(tf.floor(w * scale), tf.int32)



def resized_size_int32(height, width, short_side=800, long_side=1333, *, max_side=16384):
    """resized_size's result computed with int32 and float32 ops only, for runtimes without float64.

    OpenVINO's CPU plugin computes float64 in float32, which moves resized_size's floor by one pixel on
    many sizes (417x301 at 96 / 128: 128 rows where float64 gives 127). Here the scale's branch and
    floor(side * target / limit) are exact integer arithmetic; what float64 adds is its rounding when
    side * target / limit is an integer k: Python's float64 then gives k or k - 1 (e.g. 97 rows at 800:
    floor(97 * (800 / 97)) = 799). Which one follows from the float64 quotient's rounding error, a property
    of the limiting side n alone: tabulated for n up to max_side (sides past it use the last entry, so
    their size can be one pixel off) and applied in float32 on exact dyadic numbers. Checked equal to
    resized_size on every size up to 2000x2000 (tests/data/coco/test_resized_size.py).
    height, width: int tensors of any shape. Returns (new_height, new_width) int32 tensors of that shape.
    """
    h, w = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    # Tests as arithmetic on 0 / 1 ints: tf2onnx loses the shape of an integer comparison's result
    # (onnxruntime then refuses the resize that uses the size).
    by_short = 1 - tf.clip_by_value(short_side * long - long_side * short, 0, 1)  # short_side/short <= long_side/long
    limit = by_short * short + (1 - by_short) * long
    target = by_short * short_side + (1 - by_short) * long_side
    tables = np.concatenate([_float64_keeps_k(long_side, max_side), _float64_keeps_k(short_side, max_side)])
    keeps_k = tf.gather(tf.constant(tables), tf.clip_by_value(limit, 1, max_side) - 1 + by_short * max_side)
    powers = tf.constant([2.0 ** j for j in range(-1, 31)], tf.float32)

    def scaled(side):
        k, rest = (side * target) // limit, (side * target) % limit
        # k / 2^e with 2^e < k <= 2^(e + 1): where k sits in the binade of the doubles just below it.
        exact_k = tf.cast(k, tf.float32)  # exact: k < 2^24
        binade = tf.reduce_sum(tf.cast(powers[1:] < tf.expand_dims(exact_k, -1), tf.int32), axis=-1)
        position = exact_k / tf.gather(powers, binade)
        divides = (1 - tf.clip_by_value(rest, 0, 1)) * tf.clip_by_value(k, 0, 1)  # k > 0 is an exact quotient
        return k - divides * tf.cast(position > keeps_k, tf.int32)

    return scaled(h), scaled(w)


def _float64_keeps_k(target, max_side):
    """[max_side] float32: for limiting side n = 1..max_side, the largest k / 2^e (see resized_size_int32) for
    which Python's floor(m * (target / n)) is still k when m * target / n = k exactly (4.0: always).

    q = float64(target / n) = (target / n)(1 + d). If d >= 0, m * q >= k and the floor is k. If d < 0, the
    product k(1 + d) rounds to k iff k|d| <= half the spacing of the doubles just below k, 2^(e - 53)
    (a tie goes to k, whose last mantissa bit is 0): iff k / 2^e <= 1 / (|d| 2^53).
    """
    from fractions import Fraction

    limits = np.full(max_side, 4.0, np.float64)
    for n in range(1, max_side + 1):
        error = (Fraction(target / n) * n - target) / target  # d, exactly
        if error < 0:
            limits[n - 1] = min(4.0, float(1 / (-error * 2 ** 53)))
    return limits.astype(np.float32)

def make_dataset(split, *, batch_size, training, short_side=800, long_side=1333, seed=None, drop_remainder=None,
                 input_context=None):
    """tf.data pipeline of one split: a CocoSplit (in memory) or a data.coco.records.CocoRecords.

    Per step (tensor ops only): decode, random horizontal flip when training
    (the image, boxes and masks), the size the model will resize the image to
    (resized_size with short_side / long_side) and the boxes scaled to it.
    Images stay uint8 at their decoded size, zero-padded to the largest in the
    batch: the model resizes, normalises and pads them
    (models.mask_rcnn.transform.detector_inputs(element) gives the detector's
    input). Instances are padded to split.max_instances with class 0.
    Training shuffles every epoch (seeded) and repeats forever; evaluation
    runs once, in image-id order, and keeps the last partial batch. Whether an
    image is flipped depends only on (seed, epoch, image id), so both kinds of
    split give an image the same element in the same epoch.
    input_context (tf.distribute.InputContext): this pipeline reads only its
    share of the images (records only; see data.coco.records.read_records).

    Elements, with M = split.max_instances and S = split.mask_size:
      image [B, Hd, Wd, 3] uint8: RGB as decoded (flipped when training), image b
        in image[b, :original_size[b, 0], :original_size[b, 1]], zeros beyond
        (Hd, Wd: the batch's largest decoded height and width);
      original_size [B, 2] int32: (height, width) as decoded = as annotated;
      image_size [B, 2] int32: (height, width) the model resizes image b to
        (resized_size(original_size, short_side, long_side)); boxes, crowd boxes
        and the model's outputs are in pixels of this resized image;
      image_id [B] int64;
      boxes [B, M, 4] float32 (y1, x1, y2, x2 in resized-image pixels, zeros for padding);
      class_ids [B, M] int32 (0 = padding); masks [B, M, S, S] uint8 (box crops);
      num_instances [B] int32; crowd_boxes [B, M, 4] float32 (resized pixels).
    """
    drop_remainder = training if drop_remainder is None else drop_remainder
    # Flips are stateless: drawn from (seed, epoch, image id); without a seed, from a random one.
    flip_seed = int(np.random.default_rng(seed).integers(2 ** 31))
    prepare = functools.partial(prepare_example, training=training, short_side=short_side, long_side=long_side,
                                flip_seed=flip_seed)
    if isinstance(split, CocoSplit):
        if input_context is not None:
            raise ValueError("input_context needs the record route (data.coco.records.open_records)")
        dataset = _memory_examples(split, training, seed).map(
            prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        from data.coco.records import read_records

        # prepare runs in the records' parsing map (one parallel stage, not two).
        dataset = read_records(split, training=training, seed=seed, input_context=input_context, prepare=prepare)
    # The batch op pads the instances to max_instances as it copies them in (no per-example padded copy).
    m, s = split.max_instances, split.mask_size
    padded_shapes = dict(image=[None, None, 3], image_id=[], boxes=[m, 4], class_ids=[m], masks=[m, s, s],
                         num_instances=[], crowd_boxes=[m, 4], image_size=[2], original_size=[2])
    dataset = dataset.padded_batch(batch_size, padded_shapes=padded_shapes, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _memory_examples(split, training, seed):
    """Examples (see prepare_example) of an in-memory CocoSplit, from a generator over its records."""
    records = split.records
    size, max_instances = split.mask_size, split.max_instances
    if not records:
        raise ValueError("the COCO split has no images to read (were all skipped as empty?)")
    order_rng = np.random.default_rng(seed)
    epochs = itertools.count()

    def generate():
        # Called once per pass over the data: a new order each epoch when training.
        epoch = next(epochs)
        order = order_rng.permutation(len(records)) if training else range(len(records))
        for i in order:
            r = records[i]
            yield dict(image_bytes=_read_bytes(r["path"]), image_id=r["image_id"], epoch=epoch,
                       original_size=[r["height"], r["width"]], boxes=r["boxes"], class_ids=r["class_ids"],
                       masks=r["masks"], crowd_boxes=r["crowd_boxes"])

    signature = dict(
        image_bytes=tf.TensorSpec([], tf.string), image_id=tf.TensorSpec([], tf.int64),
        epoch=tf.TensorSpec([], tf.int64), original_size=tf.TensorSpec([2], tf.int32),
        boxes=tf.TensorSpec([None, 4], tf.float32), class_ids=tf.TensorSpec([None], tf.int32),
        masks=tf.TensorSpec([None, size, size], tf.uint8), crowd_boxes=tf.TensorSpec([None, 4], tf.float32))
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    if training:
        return dataset.repeat()
    # A known length lets Keras stop before asking an exhausted iterator for
    # one more batch (that extra step would count in the metrics' means).
    return dataset.apply(tf.data.experimental.assert_cardinality(len(records)))


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def prepare_example(example, *, training, short_side, long_side, flip_seed):
    """One example -> one unbatched, unpadded element of make_dataset (its batch op pads the instances).

    example: image_bytes [] string (the encoded file), image_id [] int64, epoch
    [] int64, original_size [2] int32, boxes [N, 4] float32 (original pixels),
    class_ids [N] int32, masks [N, S, S] uint8, crowd_boxes [C, 4] float32,
    with N, C <= max_instances.
    """
    data = example["image_bytes"]
    # JPEGs with libjpeg's accurate integer DCT, as Pillow (data.images.read_image, torchvision's CocoDetection)
    # decodes them: decode_image's default fast DCT differs from it by up to ~6 grey levels.
    image = tf.cond(tf.io.is_jpeg(data),
                    lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
                    lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    # The model crops each image to original_size, so the file must hold that size: both readers check it
    # before this runs (data.coco.convert when it converts, read_coco(in_memory=True) from the file's header).
    original = example["original_size"]
    new_h, new_w = resized_size(original[0], original[1], short_side, long_side)
    box_scale = tf.stack([new_h, new_w, new_h, new_w]) / tf.tile(original, [2])
    boxes = example["boxes"] * tf.cast(box_scale, tf.float32)
    crowd_boxes = example["crowd_boxes"] * tf.cast(box_scale, tf.float32)
    masks = example["masks"]
    if training:
        # Image ids stay below 2**31 in COCO; the epoch takes the high bits.
        key = tf.stack([tf.constant(flip_seed, tf.int64), example["epoch"] * 2 ** 31 + example["image_id"]])
        flip = tf.random.stateless_uniform([], seed=key) < 0.5
        width = tf.cast(new_w, tf.float32)
        # tf.reverse, not a ::-1 slice (a strided-slice kernel: 14 ms on an 800x1066 float image here).
        image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
        boxes = tf.cond(flip, lambda: _flip_boxes(boxes, width), lambda: boxes)
        crowd_boxes = tf.cond(flip, lambda: _flip_boxes(crowd_boxes, width), lambda: crowd_boxes)
        masks = tf.cond(flip, lambda: tf.reverse(masks, [2]), lambda: masks)
    return dict(image=image, image_id=example["image_id"], boxes=boxes, class_ids=example["class_ids"], masks=masks,
                num_instances=tf.shape(boxes)[0], crowd_boxes=crowd_boxes, image_size=tf.stack([new_h, new_w]),
                original_size=original)


def _flip_boxes(boxes, width):
    """Mirror [N, 4] (y1, x1, y2, x2) boxes in an image `width` pixels wide."""
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    return tf.stack([y1, width - x2, y2, width - x1], axis=-1)


"""COCO instances: pycocotools reader, compact instance masks, tf.data pipeline, results and COCOeval.

Layout read (the official one):

    DATA_DIR/annotations/instances_{train,val}2017.json
    DATA_DIR/{train,val}2017/*.jpg

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
"""
import contextlib
import dataclasses
import io
import json
import logging
import os

import numpy as np
import tensorflow as tf
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# The same ImageNet normalisation as the Cityscapes pipeline.
from data.augment import normalize_image

log = logging.getLogger(__name__)

SEGM_METRICS = ("segm_AP", "segm_AP50", "segm_AP75", "segm_APs", "segm_APm", "segm_APl")


@dataclasses.dataclass(frozen=True)
class Categories:
    """COCO category ids <-> contiguous class ids (0 = background, 1..K in COCO-id order)."""

    coco_ids: tuple  # coco_ids[k - 1] is the COCO id of contiguous class k
    names: tuple

    @classmethod
    def from_coco(cls, coco):
        cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
        return cls(tuple(int(c["id"]) for c in cats), tuple(c["name"] for c in cats))

    @property
    def num_classes(self):
        """K, the number of object classes (background not counted)."""
        return len(self.coco_ids)

    def to_contiguous(self, coco_ids):
        """COCO ids (int or array) -> contiguous ids 1..K (int32 array). Unknown ids raise ValueError."""
        lookup = {cid: k + 1 for k, cid in enumerate(self.coco_ids)}
        ids = np.asarray(coco_ids)
        unknown = sorted({int(i) for i in ids.ravel()} - set(lookup))
        if unknown:
            raise ValueError(f"category ids {unknown} are not in the annotation file's categories")
        return np.vectorize(lookup.__getitem__, otypes=[np.int32])(ids) if ids.size else ids.astype(np.int32)

    def to_coco(self, class_ids):
        """Contiguous ids 1..K (int or array) -> COCO ids (int64 array). 0 or > K raise ValueError."""
        ids = np.asarray(class_ids, np.int64)
        if ids.size and (ids.min() < 1 or ids.max() > self.num_classes):
            raise ValueError(f"class ids must be in 1..{self.num_classes}, got {np.unique(ids).tolist()}")
        return np.asarray(self.coco_ids, np.int64)[ids - 1]


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


def read_coco(data_dir, split, *, mask_size=56, max_instances=100, skip_images_without_annotations=False):
    """Read DATA_DIR/annotations/instances_{split}2017.json and index its images.

    Drops (counted in CocoSplit.dropped and logged, never silent): polygon parts
    with fewer than 3 points (the annotation too when no part is left), boxes of
    zero width or height, instances beyond max_instances in one image, and, with
    skip_images_without_annotations=True, images with no usable instance.
    iscrowd annotations are not instances: they are kept as crowd_boxes.
    Returns a CocoSplit. Missing files raise FileNotFoundError naming the path.
    """
    ann_path = os.path.join(data_dir, "annotations", f"instances_{split}2017.json")
    image_dir = os.path.join(data_dir, f"{split}2017")
    if not os.path.isfile(ann_path):
        raise FileNotFoundError(
            f"{ann_path} not found: --data must be a COCO folder with annotations/instances_{split}2017.json "
            f"(write a sample with: python -m data.samples coco DIR)")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco = COCO(ann_path)
    categories = Categories.from_coco(coco)
    dropped = dict(polygon_parts_with_fewer_than_3_points=0, annotations_with_no_valid_polygon=0,
                   zero_area_boxes=0, instances_over_max_instances=0, crowd_regions_over_max_instances=0,
                   images_without_annotations_skipped=0)
    records = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        height, width = int(info["height"]), int(info["width"])
        path = os.path.join(image_dir, info["file_name"])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: {ann_path} lists it (image id {image_id})")
        boxes, class_ids, masks, crowd_boxes = [], [], [], []
        for ann in coco.imgToAnns[image_id]:
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w <= 0 or h <= 0:
                dropped["zero_area_boxes"] += 1
                continue
            box = [y, x, y + h, x + w]
            if ann.get("iscrowd", 0):
                if len(crowd_boxes) == max_instances:
                    dropped["crowd_regions_over_max_instances"] += 1
                else:
                    crowd_boxes.append(box)
                continue
            segmentation = ann["segmentation"]
            if isinstance(segmentation, list):
                kept = [p for p in segmentation if len(p) >= 6]
                dropped["polygon_parts_with_fewer_than_3_points"] += len(segmentation) - len(kept)
                if not kept:
                    dropped["annotations_with_no_valid_polygon"] += 1
                    continue
                segmentation = kept
            if len(boxes) == max_instances:
                dropped["instances_over_max_instances"] += 1
                continue
            boxes.append(box)
            class_ids.append(ann["category_id"])
            masks.append(crop_mask(annotation_mask(segmentation, height, width), box, mask_size))
        if not boxes and skip_images_without_annotations:
            dropped["images_without_annotations_skipped"] += 1
            continue
        records.append(dict(
            image_id=int(image_id), path=path, height=height, width=width,
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            class_ids=categories.to_contiguous(np.asarray(class_ids, np.int64)).reshape(-1),
            masks=np.asarray(masks, np.uint8).reshape(-1, mask_size, mask_size),
            crowd_boxes=np.asarray(crowd_boxes, np.float32).reshape(-1, 4)))
    result = CocoSplit(coco, categories, records, dropped, mask_size, max_instances)
    if any(dropped.values()):
        log.warning("%s: %s", ann_path, result.summary())
    return result


def annotation_mask(segmentation, height, width):
    """Full-image binary mask [H, W] uint8 of one COCO segmentation.

    segmentation: polygons [[x1, y1, x2, y2, ...], ...] (parts merged), an
    uncompressed RLE {"counts": [int, ...], "size": [H, W]}, or a compressed RLE
    {"counts": str or bytes, "size": [H, W]}.
    """
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    return mask_utils.decode(rle)


def crop_mask(mask, box, size):
    """Resample a full-image mask inside `box` to [size, size] uint8 (0..255).

    mask: [H, W] 0/1. box: (y1, x1, y2, x2) continuous pixels. Output pixel (i, j)
    is the bilinear value at the centre of bin (i, j) of the box, i.e. at index
    coordinates y1 + (i + 0.5) * (y2 - y1) / size - 0.5 (same along x); positions
    past the image border take the border pixel's value.
    """
    y1, x1, y2, x2 = box
    rows = _interpolation_matrix(y1, y2, size, mask.shape[0])
    cols = _interpolation_matrix(x1, x2, size, mask.shape[1])
    r0, r1 = _support(rows)
    c0, c1 = _support(cols)
    crop = rows[:, r0:r1] @ mask[r0:r1, c0:c1].astype(np.float32) @ cols[:, c0:c1].T
    return np.round(255.0 * np.clip(crop, 0.0, 1.0)).astype(np.uint8)


def _interpolation_matrix(start, end, size, length):
    """[size, length] bilinear (triangle) weights of `size` bin centres of [start, end) over `length` pixels."""
    centres = start + (np.arange(size) + 0.5) * (end - start) / size - 0.5
    centres = np.clip(centres, 0.0, length - 1.0)
    return np.maximum(0.0, 1.0 - np.abs(centres[:, None] - np.arange(length)[None, :])).astype(np.float32)


def _support(weights):
    """Half-open range of columns with any non-zero weight (keeps the matmul to the box's window)."""
    used = np.flatnonzero(weights.any(axis=0))
    return int(used[0]), int(used[-1]) + 1


def resized_size(height, width, short_side, long_side):
    """Size after scaling so the short side is short_side unless the long side would pass long_side.

    Works on Python ints or int32 tensors; returns (new_height, new_width) rounded.
    """
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    scale = tf.minimum(short_side / tf.minimum(h, w), long_side / tf.maximum(h, w))
    return (tf.cast(tf.round(h * scale), tf.int32), tf.cast(tf.round(w * scale), tf.int32))


def make_dataset(split, *, batch_size, training, short_side=800, long_side=1333, stride=32, seed=None,
                 drop_remainder=None):
    """tf.data pipeline of one CocoSplit.

    Per step (tensor ops only): decode, resize keeping aspect (short_side /
    long_side limits), random horizontal flip when training (boxes and masks
    too), ImageNet normalisation, zero padding (= the mean colour after
    normalisation) to a multiple of `stride`, then to the largest image in the
    batch. Instances are padded to split.max_instances with class 0.
    Training shuffles every epoch (seeded) and repeats forever; evaluation
    runs once, in image-id order, and keeps the last partial batch.

    Elements, with M = split.max_instances and S = split.mask_size:
      image [B, H, W, 3] float32; image_id [B] int64;
      boxes [B, M, 4] float32 (y1, x1, y2, x2 in resized-image pixels, zeros for padding);
      class_ids [B, M] int32 (0 = padding); masks [B, M, S, S] uint8 (box crops);
      num_instances [B] int32; crowd_boxes [B, M, 4] float32 (resized pixels);
      image_size [B, 2] int32 (resized, before padding); original_size [B, 2] int32.
    """
    records = split.records
    size, max_instances = split.mask_size, split.max_instances
    if not records:
        raise ValueError("the COCO split has no images to read (were all skipped as empty?)")
    drop_remainder = training if drop_remainder is None else drop_remainder
    order_rng = np.random.default_rng(seed)

    def generate():
        # Called once per pass over the data: a new order each epoch when training.
        order = order_rng.permutation(len(records)) if training else range(len(records))
        for i in order:
            r = records[i]
            yield dict(path=r["path"], image_id=r["image_id"], original_size=[r["height"], r["width"]],
                       boxes=r["boxes"], class_ids=r["class_ids"], masks=r["masks"],
                       crowd_boxes=r["crowd_boxes"])

    signature = dict(
        path=tf.TensorSpec([], tf.string), image_id=tf.TensorSpec([], tf.int64),
        original_size=tf.TensorSpec([2], tf.int32), boxes=tf.TensorSpec([None, 4], tf.float32),
        class_ids=tf.TensorSpec([None], tf.int32), masks=tf.TensorSpec([None, size, size], tf.uint8),
        crowd_boxes=tf.TensorSpec([None, 4], tf.float32))
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    if training:
        dataset = dataset.repeat()
    else:
        # A known length lets Keras stop before asking an exhausted iterator for
        # one more batch (that extra step would count in the metrics' means).
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(records)))
    flip_seed = None if seed is None else seed + 1

    def prepare(example):
        image = tf.io.decode_image(tf.io.read_file(example["path"]), channels=3, expand_animations=False)
        original = example["original_size"]
        new_h, new_w = resized_size(tf.shape(image)[0], tf.shape(image)[1], short_side, long_side)
        image = tf.image.resize(tf.cast(image, tf.float32), [new_h, new_w], method="bilinear")
        box_scale = tf.stack([new_h, new_w, new_h, new_w]) / tf.tile(original, [2])
        boxes = example["boxes"] * tf.cast(box_scale, tf.float32)
        crowd_boxes = example["crowd_boxes"] * tf.cast(box_scale, tf.float32)
        masks = example["masks"]
        if training:
            flip = tf.random.uniform([], seed=flip_seed) < 0.5
            width = tf.cast(new_w, tf.float32)
            image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
            boxes = tf.cond(flip, lambda: _flip_boxes(boxes, width), lambda: boxes)
            crowd_boxes = tf.cond(flip, lambda: _flip_boxes(crowd_boxes, width), lambda: crowd_boxes)
            masks = tf.cond(flip, lambda: masks[:, :, ::-1], lambda: masks)
        image = normalize_image(image)
        padded_h = -(-new_h // stride) * stride
        padded_w = -(-new_w // stride) * stride
        image = tf.pad(image, [[0, padded_h - new_h], [0, padded_w - new_w], [0, 0]])
        count = tf.shape(boxes)[0]
        extra = max_instances - count
        return dict(
            image=image, image_id=example["image_id"],
            boxes=tf.pad(boxes, [[0, extra], [0, 0]]),
            class_ids=tf.pad(example["class_ids"], [[0, extra]]),
            masks=tf.pad(masks, [[0, extra], [0, 0], [0, 0]]),
            num_instances=count,
            crowd_boxes=tf.pad(crowd_boxes, [[0, max_instances - tf.shape(crowd_boxes)[0]], [0, 0]]),
            image_size=tf.stack([new_h, new_w]), original_size=original)

    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.padded_batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _flip_boxes(boxes, width):
    """Mirror [N, 4] (y1, x1, y2, x2) boxes in an image `width` pixels wide."""
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    return tf.stack([y1, width - x2, y2, width - x1], axis=-1)


def segm_results(predictions, categories):
    """COCO segm results from per-image predictions.

    predictions: iterable of dicts with image_id int, masks at the original
    image size (either [N, H, W] 0/1, or an object with an rle() method giving
    the N COCO RLEs, such as models.mask_rcnn.PastedMasks), class_ids [N]
    (contiguous 1..K), scores [N] float.
    Returns [{image_id, category_id (COCO id), segmentation {size, counts: str},
    score}], without a `bbox` key (it would make COCOeval size masks by box area).
    """
    results = []
    for p in predictions:
        masks = p["masks"]
        if not len(masks):
            continue
        if hasattr(masks, "rle"):  # duck-typed: data does not import models
            rles = masks.rle()
        else:
            rles = mask_utils.encode(np.asfortranarray(np.asarray(masks, np.uint8).transpose(1, 2, 0)))
        for rle, cat, score in zip(rles, categories.to_coco(p["class_ids"]), p["scores"]):
            results.append({"image_id": int(p["image_id"]), "category_id": int(cat),
                            "segmentation": {"size": [int(v) for v in rle["size"]],
                                             "counts": rle["counts"].decode("ascii")},
                            "score": float(score)})
    return results


def write_results(path, results):
    """Write COCO results (a list of dicts) as JSON."""
    with open(path, "w") as f:
        json.dump(results, f)


def evaluate_segm(coco_gt, results, verbose=False):
    """COCO mask AP of `results` against `coco_gt` (a pycocotools COCO), with COCOeval.

    Returns {segm_AP, segm_AP50, segm_AP75, segm_APs, segm_APm, segm_APl} as
    floats in [0, 1]; -1.0 where the ground truth has no object of that size
    (COCOeval's convention); all 0.0 when there are no results. Evaluates every
    image of coco_gt. verbose=True prints COCOeval's table.
    """
    if not results:
        return {name: 0.0 for name in SEGM_METRICS}
    chatter = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with chatter:
        # loadRes writes area/bbox/id into the dicts it is given: hand it copies.
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(SEGM_METRICS, evaluator.stats[:6])}

"""COCO instances and their record format: the lowest module of data.coco (the others import it).

- Categories: COCO category ids <-> contiguous class ids 1..K.
- image_instances: one image's annotations -> boxes, class ids, compact masks
  (data.coco.masks.crop_mask), crowd regions; what both readers (the in-memory
  one and the TFRecord shards) hold per image.
- serialize_example / RECORD_FEATURES: one image as a tf.train.Example, the
  schema the shards are written in (data.coco.convert) and read with
  (data.coco.records); see data.coco.records' module doc.
Conventions (boxes, class ids, masks): see data.coco.pipeline's module doc.
"""
import dataclasses
import os

import numpy as np
import tensorflow as tf

from data.coco.annotations import CocoFileNotFound, CocoInputError
from data.coco.masks import annotation_mask, crop_mask


@dataclasses.dataclass(frozen=True)
class Categories:
    """COCO category ids <-> contiguous class ids (0 = background, 1..K in COCO-id order)."""

    coco_ids: tuple  # coco_ids[k - 1] is the COCO id of contiguous class k
    names: tuple

    @classmethod
    def from_index(cls, index):
        """From a data.coco.annotations.CocoIndex (or anything with categories [(id, name)] sorted by id)."""
        return cls(tuple(int(i) for i, _ in index.categories), tuple(name for _, name in index.categories))

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


def split_paths(data_dir, split):
    """(annotation file, image folder) of a split in the official layout; a missing file is one clear line."""
    ann_path = os.path.join(data_dir, "annotations", f"instances_{split}2017.json")
    if not os.path.isfile(ann_path):
        raise CocoFileNotFound(
            f"{ann_path} not found: --data must be a COCO folder with annotations/instances_{split}2017.json "
            f"(write a sample with: python -m data.samples coco DIR)")
    return ann_path, os.path.join(data_dir, f"{split}2017")


def empty_drop_counts():
    """The drop counters of a split, all present (CocoSplit.dropped)."""
    return dict(polygon_parts_with_fewer_than_3_points=0, annotations_with_no_valid_polygon=0,
                zero_area_boxes=0, instances_over_max_instances=0, crowd_regions_over_max_instances=0,
                images_without_annotations_skipped=0)


def check_image_size(image):
    """Refuses (CocoInputError) an image file whose size differs from the annotation file's."""
    from PIL import Image

    with Image.open(image["path"]) as f:
        width, height = f.size
    if (height, width) != (image["height"], image["width"]):
        raise CocoInputError(f"{image['path']}: image {image['id']} is {height}x{width}, "
                             f"the annotation file says {image['height']}x{image['width']}")


def image_instances(image, annotations, categories, mask_size, dropped):
    """One image's instances, every one kept (no max_instances cap), in annotation-file order.

    image: a CocoIndex image dict; annotations: its checked annotations.
    Returns dict(image_id, path, height, width, boxes [N, 4] float32 (original
    pixels), class_ids [N] int32 (1..K), masks [N, S, S] uint8, crowd_boxes
    [C, 4] float32). Counts what it drops in `dropped` (see read_coco).
    """
    height, width = image["height"], image["width"]
    boxes, class_ids, masks, crowd_boxes = [], [], [], []
    for ann in annotations:
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            dropped["zero_area_boxes"] += 1
            continue
        box = [y, x, y + h, x + w]
        if ann.get("iscrowd", 0):
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
        boxes.append(box)
        class_ids.append(ann["category_id"])
        masks.append(crop_mask(annotation_mask(segmentation, height, width), box, mask_size))
    return dict(
        image_id=int(image["id"]), path=image["path"], height=height, width=width,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        class_ids=categories.to_contiguous(np.asarray(class_ids, np.int64)).reshape(-1),
        masks=np.asarray(masks, np.uint8).reshape(-1, mask_size, mask_size),
        crowd_boxes=np.asarray(crowd_boxes, np.float32).reshape(-1, 4))


RECORD_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/file_name": tf.io.FixedLenFeature([], tf.string),
    "image/id": tf.io.FixedLenFeature([], tf.int64),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "instances/boxes": tf.io.FixedLenSequenceFeature([4], tf.float32, allow_missing=True),
    "instances/class_ids": tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True),
    "instances/masks": tf.io.FixedLenFeature([], tf.string),
    "crowd/boxes": tf.io.FixedLenSequenceFeature([4], tf.float32, allow_missing=True),
}


def serialize_example(image_bytes, file_name, record):
    """One image as a serialized tf.train.Example (schema above). record: as data.coco.image_instances."""
    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(values, np.float32).ravel()))

    def raw(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    feature = {
        "image/encoded": raw(image_bytes), "image/file_name": raw(file_name.encode()),
        "image/id": ints([record["image_id"]]), "image/height": ints([record["height"]]),
        "image/width": ints([record["width"]]), "instances/boxes": floats(record["boxes"]),
        "instances/class_ids": ints(record["class_ids"]),
        "instances/masks": raw(np.ascontiguousarray(record["masks"], np.uint8).tobytes()),
        "crowd/boxes": floats(record["crowd_boxes"]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

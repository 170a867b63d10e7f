"""A small synthetic dataset in the official COCO instances layout.

    write_coco_sample(out_dir, num_train=48, num_val=16, size=(256, 320), seed=0)

writes

    out_dir/train2017/000000000001.jpg ...
    out_dir/val2017/000000500001.jpg ...
    out_dir/annotations/instances_train2017.json
    out_dir/annotations/instances_val2017.json

with the official top-level keys (info, licenses, images, annotations,
categories). Five categories keep their real, non-contiguous COCO ids (1 person,
3 car, 18 dog, 44 bottle, 62 chair); each has its own shape, colour and texture
so that a small head can tell them apart:

    person  tall ellipse,           red,     horizontal stripes
    car     box with a cabin on top, blue,   vertical stripes
    dog     upward triangle,        green,   checkerboard
    bottle  diamond,                yellow,  speckles
    chair   two separate bars,      magenta, plain  (a multi-part polygon)

Objects vary in scale (COCO small, medium and large), may overlap (box IoU up
to 0.25; later objects are painted over earlier ones, and the polygons are the
whole shapes, as COCO annotates occluded objects by their outline), and every
fourth image holds one crowd region (iscrowd=1, uncompressed RLE, a cluster of
small people) as COCO annotates crowds. Every sixteenth training image has no
object, so readers meet images without annotations. Deterministic per seed.
"""
import json
import os

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from data.errors import OutputExistsError

# (COCO id, name, supercategory, RGB colour, texture).
CATEGORIES = (
    (1, "person", "person", (210, 40, 40), "hstripes"),
    (3, "car", "vehicle", (40, 70, 215), "vstripes"),
    (18, "dog", "animal", (40, 190, 60), "checker"),
    (44, "bottle", "kitchen", (230, 210, 40), "speckle"),
    (62, "chair", "furniture", (200, 50, 200), "plain"),
)
# Height / width of each shape's box, drawn uniformly from this range.
_ASPECT = {"person": (1.6, 2.2), "car": (0.45, 0.65), "dog": (0.8, 1.1), "bottle": (1.3, 1.7), "chair": (0.9, 1.2)}
_MAX_BOX_IOU = 0.25
_CROWD_EVERY = 4
_EMPTY_EVERY = 16
_VAL_ID_OFFSET = 500000


def write_coco_sample(out_dir, *, num_train, num_val, size, seed):
    """Write the sample; refuse to overwrite any file it would write.

    out_dir: folder (created). num_train, num_val: images per split (>= 1).
    size: (height, width) of every image. seed: int.
    Raises data.errors.OutputExistsError (one line naming the file) if a sample is already there.
    """
    height, width = size
    splits = (("train", num_train, 1), ("val", num_val, _VAL_ID_OFFSET + 1))
    for split, count, first_id in splits:
        paths = [os.path.join(out_dir, "annotations", f"instances_{split}2017.json")]
        paths += [_image_path(out_dir, split, first_id + i) for i in range(count)]
        for path in paths:
            if os.path.exists(path):
                raise OutputExistsError(f"{path} already exists; choose an empty folder for the COCO sample")

    rng = np.random.default_rng(seed)
    next_ann_id = 1
    for split, count, first_id in splits:
        os.makedirs(os.path.join(out_dir, f"{split}2017"), exist_ok=True)
        os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image_id = first_id + i
            empty = split == "train" and i % _EMPTY_EVERY == _EMPTY_EVERY - 1
            crowd = i % _CROWD_EVERY == _CROWD_EVERY - 2
            pixels, anns = _draw_scene(rng, height, width, empty=empty, crowd=crowd)
            Image.fromarray(pixels).save(_image_path(out_dir, split, image_id), quality=92)
            images.append({
                "id": image_id, "file_name": f"{image_id:012d}.jpg", "height": height, "width": width,
                "license": 1, "date_captured": "2017-01-01 00:00:00", "coco_url": "", "flickr_url": "",
            })
            for ann in anns:
                ann.update(id=next_ann_id, image_id=image_id)
                next_ann_id += 1
                annotations.append(ann)
        document = {
            "info": {"description": "Synthetic COCO-format sample", "version": "1.0", "year": 2017,
                     "contributor": "data.samples.coco", "url": "", "date_created": "2017-01-01"},
            "licenses": [{"id": 1, "name": "CC0", "url": ""}],
            "images": images,
            "annotations": annotations,
            "categories": [{"id": cid, "name": name, "supercategory": sup} for cid, name, sup, _, _ in CATEGORIES],
        }
        with open(os.path.join(out_dir, "annotations", f"instances_{split}2017.json"), "w") as f:
            json.dump(document, f)


def _image_path(out_dir, split, image_id):
    return os.path.join(out_dir, f"{split}2017", f"{image_id:012d}.jpg")


def _draw_scene(rng, height, width, *, empty, crowd):
    """One image ([H, W, 3] uint8) and its annotations (dicts without id/image_id)."""
    pixels = _background(rng, height, width)
    annotations = []
    if crowd:
        mask = _crowd_mask(rng, height, width)
        pixels[mask] = _texture(rng, height, width, CATEGORIES[0][3], CATEGORIES[0][4])[mask]
        annotations.append(_crowd_annotation(mask))
    if empty:
        return pixels, annotations

    boxes = []
    for _ in range(rng.integers(2, 7)):
        category = CATEGORIES[rng.integers(len(CATEGORIES))]
        placed = _place(rng, height, width, category[1], boxes)
        if placed is None:
            continue
        boxes.append(placed)
        polygons = _shape_polygons(category[1], placed)
        mask = _rasterise(polygons, height, width)
        pixels[mask] = _texture(rng, height, width, category[3], category[4])[mask]
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        x, y, w, h = mask_utils.toBbox(rle).tolist()
        annotations.append({
            "category_id": category[0], "segmentation": polygons, "area": float(mask_utils.area(rle)),
            "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)], "iscrowd": 0,
        })
    return pixels, annotations


def _background(rng, height, width):
    """Low-contrast grey gradient plus noise: no colour a category uses."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(90, 150)
    tilt = rng.uniform(-30, 30, size=2)
    grey = base + tilt[0] * yy / height + tilt[1] * xx / width
    noise = rng.normal(0, 6, size=(height, width, 3))
    return np.clip(grey[..., None] + noise, 0, 255).astype(np.uint8)


def _texture(rng, height, width, colour, kind):
    """A full-image [H, W, 3] uint8 fill of the category's colour and texture."""
    yy, xx = np.mgrid[0:height, 0:width]
    shade = np.ones((height, width), np.float32)
    if kind == "hstripes":
        shade = np.where((yy // 4) % 2 == 0, 1.0, 0.6)
    elif kind == "vstripes":
        shade = np.where((xx // 4) % 2 == 0, 1.0, 0.6)
    elif kind == "checker":
        shade = np.where(((yy // 5) + (xx // 5)) % 2 == 0, 1.0, 0.55)
    elif kind == "speckle":
        shade = rng.uniform(0.6, 1.0, size=(height, width))
    fill = np.asarray(colour, np.float32)[None, None, :] * shade[..., None]
    return np.clip(fill + rng.normal(0, 4, size=fill.shape), 0, 255).astype(np.uint8)


def _place(rng, height, width, name, boxes):
    """A box (x1, y1, x2, y2) whose IoU with every placed box is at most _MAX_BOX_IOU, or None."""
    short = min(height, width)
    for _ in range(50):
        # Log-uniform size spreads objects over COCO's small/medium/large areas.
        side = float(np.exp(rng.uniform(np.log(14), np.log(0.6 * short))))
        aspect = rng.uniform(*_ASPECT[name])
        box_w = side / np.sqrt(aspect)
        box_h = side * np.sqrt(aspect)
        if box_w >= width - 2 or box_h >= height - 2:
            continue
        x1 = rng.uniform(1, width - 1 - box_w)
        y1 = rng.uniform(1, height - 1 - box_h)
        box = (x1, y1, x1 + box_w, y1 + box_h)
        if all(_iou(box, other) <= _MAX_BOX_IOU for other in boxes):
            return box
    return None


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _shape_polygons(name, box):
    """COCO polygons [[x1, y1, x2, y2, ...], ...] of the category's shape filling `box`."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if name == "person":
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        points = [(cx + 0.5 * w * np.cos(a), cy + 0.5 * h * np.sin(a)) for a in angles]
        parts = [points]
    elif name == "car":
        body_top = y1 + 0.45 * h
        parts = [[(x1, y2), (x1, body_top), (x1 + 0.25 * w, body_top), (x1 + 0.35 * w, y1),
                  (x1 + 0.7 * w, y1), (x1 + 0.8 * w, body_top), (x2, body_top), (x2, y2)]]
    elif name == "dog":
        parts = [[(x1, y2), (cx, y1), (x2, y2)]]
    elif name == "bottle":
        parts = [[(cx, y1), (x2, cy), (cx, y2), (x1, cy)]]
    else:  # chair: two bars with a gap, one object in two polygons.
        parts = [[(x1, y1), (x1 + 0.35 * w, y1), (x1 + 0.35 * w, y2), (x1, y2)],
                 [(x2 - 0.35 * w, y1), (x2, y1), (x2, y2), (x2 - 0.35 * w, y2)]]
    return [[round(float(v), 2) for point in part for v in point] for part in parts]


def _rasterise(polygons, height, width):
    """Boolean [H, W] mask of the polygons as pycocotools rasterises them (what COCOeval scores)."""
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return mask_utils.decode(rle).astype(bool)


def _crowd_mask(rng, height, width):
    """A cluster of small overlapping ellipses ([H, W] bool) around a random centre."""
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    cx = rng.uniform(0.2, 0.8) * width
    cy = rng.uniform(0.2, 0.8) * height
    for _ in range(rng.integers(5, 9)):
        px = cx + rng.normal(0, 0.06 * width)
        py = cy + rng.normal(0, 0.06 * height)
        rx, ry = rng.uniform(3, 6), rng.uniform(6, 11)
        draw.ellipse([px - rx, py - ry, px + rx, py + ry], fill=1)
    return np.asarray(image, bool)


def _crowd_annotation(mask):
    """iscrowd=1 annotation with uncompressed RLE (column-major run lengths, zeros first), as COCO."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    x, y, w, h = mask_utils.toBbox(rle).tolist()
    return {
        "category_id": CATEGORIES[0][0], "iscrowd": 1, "area": float(mask_utils.area(rle)),
        "segmentation": {"counts": counts, "size": list(mask.shape)}, "bbox": [x, y, w, h],
    }


def write_coco_annotations_at_scale(out_dir, *, num_images, size=(64, 80), instances_per_image=7.3, seed=0,
                                    split="train", distinct_images=32):
    """A COCO-sized annotation file for benchmarks: out_dir/annotations/instances_{split}2017.json.

    num_images entries with on average instances_per_image polygon instances
    each (Poisson; COCO train2017: 118k images, 860k instances), drawn with the
    sample's shapes (_shape_polygons) at random places and scales, and a crowd
    region (uncompressed RLE) on every _CROWD_EVERY-th image. The annotations do
    not follow the pixels: the image files are `distinct_images` small scenes,
    hard-linked under every file name, which is all a benchmark of the annotation
    side needs. Returns the number of (non-crowd) instances written.
    """
    height, width = size
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(out_dir, f"{split}2017")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    scenes = []
    for k in range(distinct_images):
        scenes.append(os.path.join(image_dir, f"scene_{k:03d}.jpg"))
        Image.fromarray(_background(rng, height, width)).save(scenes[-1], quality=90)
    crowds = [_crowd_annotation(_crowd_mask(rng, height, width)) for _ in range(8)]
    images, annotations = [], []
    counts = rng.poisson(instances_per_image, size=num_images)
    for i, count in enumerate(counts):
        image_id = i + 1
        file_name = f"{image_id:012d}.jpg"
        os.link(scenes[i % distinct_images], os.path.join(image_dir, file_name))
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for _ in range(count):
            category = CATEGORIES[rng.integers(len(CATEGORIES))]
            box_w, box_h = np.exp(rng.uniform(np.log(4), np.log(0.9 * np.array([width, height]))))
            x1, y1 = rng.uniform(0, width - box_w), rng.uniform(0, height - box_h)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category[0],
                                "segmentation": _shape_polygons(category[1], (x1, y1, x1 + box_w, y1 + box_h)),
                                "area": float(box_w * box_h), "bbox": [round(float(v), 2) for v in
                                                                       (x1, y1, box_w, box_h)], "iscrowd": 0})
        if i % _CROWD_EVERY == _CROWD_EVERY - 2:
            annotations.append(dict(crowds[i % len(crowds)], id=len(annotations) + 1, image_id=image_id))
    document = {"images": images, "annotations": annotations,
                "categories": [{"id": cid, "name": name, "supercategory": sup} for cid, name, sup, _, _ in CATEGORIES]}
    with open(os.path.join(out_dir, "annotations", f"instances_{split}2017.json"), "w") as f:
        json.dump(document, f)
    return int(counts.sum())

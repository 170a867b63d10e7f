"""A COCO instances JSON read and checked: every problem is one line naming the file and the image / annotation id.

    index = load_instances(ann_path, image_dir, skip_bad=False)

What stops the read (CocoInputError, a ValueError; CocoFileNotFound is also a
FileNotFoundError), or with skip_bad=True is skipped with a warning line and
counted in index.skipped:
- the file is not JSON, or lacks the images / annotations / categories lists;
- an image without id / file_name / height / width, a duplicate image id, a
  file_name that leaves the image folder (absolute, or `../`), a missing file;
- an annotation without id / image_id / category_id / bbox / segmentation, with
  a category the file does not list, an image id the file does not list, a bbox
  that is not 4 finite numbers or has a negative width or height, a polygon of
  odd length, an RLE whose size is not its image's.
Image files themselves (corrupt, or a size other than the JSON's) are checked by
check_image_file, which the record conversion calls for every image.

Two quirks of the official release are not errors: they are dropped and counted
as data.coco.read_coco always has (train2017 annotation 918 has a 0-pixel-high box
and a 2-point polygon, cocodataset/cocoapi#355): boxes of zero width or height,
and polygon parts with fewer than 3 points (the annotation too when no part is
left). Those drops are made where the instances are built (data.coco.image_instances).
"""
import collections
import dataclasses
import hashlib
import io
import json
import logging
import math
import os

from data.errors import UserError

log = logging.getLogger(__name__)

# Skipped problems logged one by one up to this many; the rest are only counted.
_WARN_LIMIT = 20


class CocoInputError(UserError, ValueError):
    """A problem in a COCO-format dataset. The message is one line naming the file and the id."""


class CocoFileNotFound(CocoInputError, FileNotFoundError):
    """A file the dataset needs (annotation file, image) is not there."""


@dataclasses.dataclass
class CocoIndex:
    """A checked COCO instances file.

    categories: [(coco_id, name)] sorted by id. images: the usable image dicts
    sorted by id (each with "path", the file's full path, added). annotations:
    image id -> its usable annotation dicts, in file order. document: the file's
    dict with only the usable images and annotations (for pycocotools' COCO).
    skipped: counts of what skip_bad left out ("bad_images", "bad_annotations").
    sha1: hex digest of the file's bytes.
    """

    ann_path: str
    image_dir: str
    categories: list
    images: list
    annotations: dict
    document: dict
    skipped: collections.Counter
    sha1: str


class _Problems:
    """Raises the first problem, or (skip_bad) warns about it and counts it."""

    def __init__(self, skip_bad):
        self.skip_bad = skip_bad
        self.counts = collections.Counter()

    def report(self, kind, message):
        if not self.skip_bad:
            raise CocoInputError(message)
        self.counts[kind] += 1
        if sum(self.counts.values()) <= _WARN_LIMIT:
            log.warning("skipped: %s", message)


def load_instances(ann_path, image_dir, *, skip_bad=False):
    """Reads and checks a COCO instances JSON whose images lie in image_dir; returns a CocoIndex."""
    if not os.path.isfile(ann_path):
        raise CocoFileNotFound(f"{ann_path} not found: expected a COCO instances annotation file")
    with open(ann_path, "rb") as f:
        raw = f.read()
    try:
        document = json.load(io.BytesIO(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CocoInputError(f"{ann_path}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise CocoInputError(f"{ann_path}: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key), list):
            raise CocoInputError(f"{ann_path}: the top-level '{key}' list is missing")
    problems = _Problems(skip_bad)
    categories = _categories(ann_path, document["categories"])
    images = _images(ann_path, image_dir, document["images"], problems)
    category_ids = {cid for cid, _ in categories}
    annotations = collections.defaultdict(list)
    for ann in document["annotations"]:
        problem = _annotation_problem(ann, images, category_ids)
        if problem:
            ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
            problems.report("bad_annotations", f"{ann_path}: annotation {ann_id}: {problem}")
            continue
        annotations[ann["image_id"]].append(ann)
    if problems.counts:
        log.warning("%s: skipped %s (skip_bad)", ann_path,
                    ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(problems.counts.items())))
    usable = sorted(images.values(), key=lambda image: image["id"])
    kept = dict(document, images=[{k: v for k, v in image.items() if k != "path"} for image in usable],
                annotations=[ann for image in usable for ann in annotations.get(image["id"], [])])
    return CocoIndex(ann_path, image_dir, categories, usable, {i["id"]: annotations.get(i["id"], []) for i in usable},
                     kept, problems.counts, hashlib.sha1(raw).hexdigest())


def _categories(ann_path, entries):
    seen = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or "name" not in entry:
            raise CocoInputError(f"{ann_path}: category {entry!r:.80} needs an integer 'id' and a 'name'")
        if entry["id"] in seen:
            raise CocoInputError(f"{ann_path}: category id {entry['id']} is listed twice")
        seen[entry["id"]] = str(entry["name"])
    if not seen:
        raise CocoInputError(f"{ann_path}: the 'categories' list is empty")
    return sorted(seen.items())


def _images(ann_path, image_dir, entries, problems):
    """image id -> image dict (with "path") for the usable images."""
    images = {}
    for entry in entries:
        image_id = entry.get("id", "?") if isinstance(entry, dict) else "?"
        where = f"{ann_path}: image {image_id}"
        if not isinstance(entry, dict) or any(k not in entry for k in ("id", "file_name", "height", "width")):
            problems.report("bad_images", f"{where}: needs id, file_name, height and width")
            continue
        if not all(isinstance(entry[k], int) and not isinstance(entry[k], bool) for k in ("id", "height", "width")):
            problems.report("bad_images", f"{where}: id, height and width must be integers")
            continue
        if entry["height"] < 1 or entry["width"] < 1:
            problems.report("bad_images", f"{where}: size {entry['height']}x{entry['width']} is empty")
            continue
        if image_id in images:
            problems.report("bad_images", f"{where}: the image id is listed twice")
            continue
        name = entry["file_name"]
        if (not isinstance(name, str) or not name or os.path.isabs(name)
                or os.path.normpath(name).split(os.sep)[0] == ".."):
            problems.report("bad_images", f"{where}: file_name {name!r} leaves the image folder {image_dir}")
            continue
        path = os.path.join(image_dir, name)
        if not os.path.isfile(path):
            if not problems.skip_bad:
                raise CocoFileNotFound(f"{path} not found: {ann_path} lists it (image id {image_id})")
            problems.report("bad_images", f"{path} not found: {ann_path} lists it (image id {image_id})")
            continue
        images[image_id] = dict(entry, path=path)
    return images


def _annotation_problem(ann, images, category_ids):
    """What makes one annotation unusable (a phrase), or None."""
    if not isinstance(ann, dict):
        return "is not a JSON object"
    missing = [k for k in ("id", "image_id", "category_id", "bbox", "segmentation") if k not in ann]
    if missing:
        return f"lacks {', '.join(missing)}"
    image = images.get(ann["image_id"])
    if image is None:
        return f"points to image id {ann['image_id']}, which is not among the file's (usable) images"
    if ann["category_id"] not in category_ids:
        return f"(image {ann['image_id']}) category_id {ann['category_id']!r} is not in the file's categories"
    box = ann["bbox"]
    if (not isinstance(box, list) or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
        return f"(image {ann['image_id']}) bbox {box!r:.80} is not 4 finite numbers [x, y, width, height]"
    if box[2] < 0 or box[3] < 0:
        return f"(image {ann['image_id']}) bbox {box} has a negative width or height"
    segmentation = ann["segmentation"]
    if isinstance(segmentation, list):
        for part in segmentation:
            if not isinstance(part, list) or not all(isinstance(v, (int, float)) for v in part):
                return f"(image {ann['image_id']}) a polygon is not a list of numbers"
            if len(part) % 2:
                return f"(image {ann['image_id']}) a polygon has an odd number of coordinates ({len(part)})"
    elif isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            return f"(image {ann['image_id']}) the RLE segmentation lacks counts or size"
        if list(segmentation["size"]) != [image["height"], image["width"]]:
            return (f"(image {ann['image_id']}) RLE size {segmentation['size']} is not the image's "
                    f"{[image['height'], image['width']]}")
    else:
        return f"(image {ann['image_id']}) segmentation is neither polygons nor RLE"
    return None


def check_image_file(path, image_id, height, width):
    """The file's bytes, after checking it decodes and has the JSON's size.

    JPEGs are decoded at 1/8 scale (libjpeg still reads every coded block, so a
    truncated or corrupt file fails as in a full decode, at a fraction of the
    cost). Raises CocoInputError naming the file and the image id.
    """
    from PIL import Image, UnidentifiedImageError

    with open(path, "rb") as f:
        data = f.read()
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            if (size[1], size[0]) != (height, width):
                raise CocoInputError(f"{path}: image {image_id} is {size[1]}x{size[0]}, "
                                     f"the annotation file says {height}x{width}")
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        if isinstance(error, CocoInputError):
            raise
        raise CocoInputError(f"{path}: image {image_id} cannot be decoded ({error})") from None
    return data

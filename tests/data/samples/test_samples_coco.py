"""The built-in COCO sample: official layout, annotation encodings, the promised variety.

References: the COCO instances format (pycocotools reads it; annToMask
rasterises it) and hand-checked properties of the scenes.
"""
import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from data import samples

SIZE = (96, 128)
NUM = {"train": 16, "val": 4}
COCO_IDS = [1, 3, 18, 44, 62]


def write(path, seed=0):
    samples.main(["coco", str(path), "--num-train", str(NUM["train"]), "--num-val", str(NUM["val"]),
                  "--size", f"{SIZE[0]}x{SIZE[1]}", "--seed", str(seed)])
    return str(path)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write(tmp_path_factory.mktemp("sample") / "coco")


def load(root, split):
    with open(os.path.join(root, "annotations", f"instances_{split}2017.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("split", ["train", "val"])
def test_official_layout_and_keys(root, split):
    document = load(root, split)
    assert set(document) == {"info", "licenses", "images", "annotations", "categories"}
    assert [c["id"] for c in document["categories"]] == COCO_IDS
    assert len(document["images"]) == NUM[split]
    for image in document["images"]:
        assert image["file_name"] == f"{image['id']:012d}.jpg"
        assert (image["height"], image["width"]) == SIZE
        assert os.path.isfile(os.path.join(root, f"{split}2017", image["file_name"]))
    ids = [a["id"] for a in document["annotations"]]
    assert len(set(ids)) == len(ids)
    # pycocotools indexes it without complaint.
    COCO(os.path.join(root, "annotations", f"instances_{split}2017.json"))


def test_image_ids_are_disjoint_across_splits(root):
    train = {i["id"] for i in load(root, "train")["images"]}
    val = {i["id"] for i in load(root, "val")["images"]}
    assert not train & val


def test_annotations_have_the_promised_variety(root):
    document = load(root, "train")
    anns = document["annotations"]
    polygons = [a for a in anns if not a["iscrowd"]]
    crowds = [a for a in anns if a["iscrowd"]]
    assert {a["category_id"] for a in polygons} == set(COCO_IDS)
    assert any(len(a["segmentation"]) > 1 for a in polygons), "no multi-part polygon"
    assert all(isinstance(a["segmentation"], list) for a in polygons)
    # One crowd region in every 4th image, as uncompressed RLE (COCO's crowd encoding).
    assert len(crowds) == NUM["train"] // 4
    assert all(isinstance(a["segmentation"]["counts"], list) for a in crowds)
    # Objects of COCO-small and COCO-medium area.
    areas = np.array([a["area"] for a in polygons])
    assert (areas < 32 ** 2).any() and (areas >= 32 ** 2).any()
    # Some boxes overlap.
    by_image = {}
    for a in polygons:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    assert any(_overlap(b1, b2) for boxes in by_image.values() for i, b1 in enumerate(boxes) for b2 in boxes[:i])
    # Image 16 (the 16th) has no annotation at all.
    annotated = {a["image_id"] for a in anns}
    assert any(image["id"] not in annotated for image in document["images"])


def _overlap(a, b):
    return min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0]) and min(a[1] + a[3], b[1] + b[3]) > max(a[1], b[1])


def test_area_and_bbox_match_the_rasterised_mask(root):
    coco = COCO(os.path.join(root, "annotations", "instances_train2017.json"))
    for ann in coco.dataset["annotations"]:
        mask = coco.annToMask(ann)
        assert ann["area"] == mask.sum()
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_crowd_rle_decodes_to_the_painted_region(root):
    """The uncompressed counts (column-major runs, zeros first) agree with pycocotools' own encoding."""
    coco = COCO(os.path.join(root, "annotations", "instances_train2017.json"))
    for ann in coco.dataset["annotations"]:
        if ann["iscrowd"]:
            mask = coco.annToMask(ann)
            assert sum(ann["segmentation"]["counts"]) == SIZE[0] * SIZE[1]
            assert mask_utils.encode(np.asfortranarray(mask))["counts"] == \
                mask_utils.frPyObjects(ann["segmentation"], *SIZE)["counts"]
            assert mask.sum() > 20


def test_objects_are_painted_in_their_colour(root):
    """Inside each unoccluded object the image is the category's colour, not the grey background."""
    from PIL import Image
    from data.samples.coco import CATEGORIES
    colour = {c[0]: np.array(c[3]) for c in CATEGORIES}
    coco = COCO(os.path.join(root, "annotations", "instances_train2017.json"))
    checked = 0
    for image_id, anns in coco.imgToAnns.items():
        pixels = np.asarray(Image.open(os.path.join(root, "train2017", coco.imgs[image_id]["file_name"])), float)
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        for k, ann in enumerate(anns):
            if ann["iscrowd"]:
                continue
            alone = masks[k] & ~np.any([m for j, m in enumerate(masks) if j != k] or [np.zeros_like(masks[k])], 0)
            if alone.sum() < 30:
                continue
            mean = pixels[alone].mean(0)
            # Textures darken the colour (shade 0.55..1) but keep its hue: close to a scaled colour.
            target = colour[ann["category_id"]]
            cosine = mean @ target / np.linalg.norm(mean) / np.linalg.norm(target)
            assert cosine > 0.97, (image_id, ann["category_id"], mean)
            checked += 1
    assert checked > 10


def test_deterministic_and_seed_dependent(tmp_path, root):
    again = write(tmp_path / "again", seed=0)
    other = write(tmp_path / "other", seed=1)
    assert load(again, "train") == load(root, "train")
    with open(os.path.join(again, "train2017", "000000000001.jpg"), "rb") as f1, \
            open(os.path.join(root, "train2017", "000000000001.jpg"), "rb") as f2:
        assert f1.read() == f2.read()
    assert load(other, "train")["annotations"] != load(root, "train")["annotations"]


def test_refuses_to_overwrite(root):
    with pytest.raises(SystemExit) as exit_info:  # a str code: that one line on stderr, exit status 1
        write(root)
    assert exit_info.value.code == (f"{root}/annotations/instances_train2017.json already exists; "
                                    "choose an empty folder for the COCO sample")

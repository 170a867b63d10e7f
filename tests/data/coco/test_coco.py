"""COCO reader, compact masks, tf.data pipeline, results JSON and COCOeval.

References: pycocotools (annToMask, loadRes, COCOeval), NumPy float64
resampling written here, and hand-computed values.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from data import coco as coco_data
from data.samples.coco import write_coco_sample

SIZE = (96, 128)
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("coco"))
    write_coco_sample(path, num_train=8, num_val=4, size=SIZE, seed=3)
    return path


@pytest.fixture(scope="module")
def train(root):
    return coco_data.read_coco(root, "train")


def _bilinear_crop_reference(mask, box, size):
    """float64 reference: explicit 4-neighbour bilinear at bin centres, border replicated."""
    y1, x1, y2, x2 = box
    out = np.zeros((size, size))
    h, w = mask.shape
    for i in range(size):
        y = min(max(y1 + (i + 0.5) * (y2 - y1) / size - 0.5, 0), h - 1)
        for j in range(size):
            x = min(max(x1 + (j + 0.5) * (x2 - x1) / size - 0.5, 0), w - 1)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            ya, xa = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = y - y0, x - x0
            out[i, j] = ((1 - fy) * (1 - fx) * mask[y0, x0] + (1 - fy) * fx * mask[y0, xa]
                         + fy * (1 - fx) * mask[ya, x0] + fy * fx * mask[ya, xa])
    return out


def _variant_json(root, tmp_path, edit):
    """A copy of the train annotations with `edit(document)` applied, in a COCO folder layout."""
    with open(os.path.join(root, "annotations", "instances_train2017.json")) as f:
        document = json.load(f)
    edit(document)
    os.makedirs(tmp_path / "annotations", exist_ok=True)
    with open(tmp_path / "annotations" / "instances_train2017.json", "w") as f:
        json.dump(document, f)
    if not os.path.exists(tmp_path / "train2017"):
        os.symlink(os.path.join(root, "train2017"), tmp_path / "train2017")
    return str(tmp_path)


def test_annotation_mask_equals_annToMask_for_every_encoding(root):
    coco = COCO(os.path.join(root, "annotations", "instances_train2017.json"))
    kinds = set()
    for ann in coco.dataset["annotations"]:
        segm = ann["segmentation"]
        expected = coco.annToMask(ann)
        np.testing.assert_array_equal(coco_data.annotation_mask(segm, *SIZE), expected)
        if isinstance(segm, list):
            kinds.add("multi-polygon" if len(segm) > 1 else "polygon")
            # The same mask given as compressed RLE, with counts as str (as JSON holds it).
            rle = mask_utils.encode(np.asfortranarray(expected))
            rle["counts"] = rle["counts"].decode()
            np.testing.assert_array_equal(coco_data.annotation_mask(rle, *SIZE), expected)
        else:
            kinds.add("uncompressed RLE (crowd)")
    assert kinds == {"polygon", "multi-polygon", "uncompressed RLE (crowd)"}


def test_reader_masks_are_the_annotated_masks_resampled_in_their_boxes(root, train):
    coco = train.coco
    checked = 0
    for record in train.records:
        anns = [a for a in coco.imgToAnns[record["image_id"]] if not a["iscrowd"]]
        assert len(anns) == len(record["class_ids"])
        for ann, box, crop, class_id in zip(anns, record["boxes"], record["masks"], record["class_ids"]):
            x, y, w, h = ann["bbox"]
            np.testing.assert_allclose(box, [y, x, y + h, x + w], atol=1e-4)
            assert train.categories.coco_ids[class_id - 1] == ann["category_id"]
            reference = _bilinear_crop_reference(coco.annToMask(ann).astype(np.float64), box, 56)
            assert np.abs(crop / 255.0 - reference).max() <= 0.5 / 255 + 1e-6
            checked += 1
    assert checked > 10


def test_crowd_annotations_are_ignore_regions_not_targets(train):
    crowd = [a for a in train.coco.dataset["annotations"] if a["iscrowd"]]
    assert crowd
    for ann in crowd:
        record = next(r for r in train.records if r["image_id"] == ann["image_id"])
        x, y, w, h = ann["bbox"]
        assert [y, x, y + h, x + w] in record["crowd_boxes"].tolist()
        assert len(record["class_ids"]) == sum(1 for a in train.coco.imgToAnns[ann["image_id"]] if not a["iscrowd"])


def test_category_id_round_trip(train):
    categories = train.categories
    assert categories.coco_ids == (1, 3, 18, 44, 62)
    assert categories.num_classes == 5
    np.testing.assert_array_equal(categories.to_contiguous([62, 1, 18, 3, 44]), [5, 1, 3, 2, 4])
    np.testing.assert_array_equal(categories.to_coco([5, 1, 3, 2, 4]), [62, 1, 18, 3, 44])
    every = np.array(categories.coco_ids)
    np.testing.assert_array_equal(categories.to_coco(categories.to_contiguous(every)), every)
    with pytest.raises(ValueError, match="2"):
        categories.to_contiguous([2])
    with pytest.raises(ValueError, match="1..5"):
        categories.to_coco([0])


def test_drops_are_counted(root, tmp_path):
    def edit(document):
        first = document["annotations"][0]
        image_id = first["image_id"]
        extra = dict(first, iscrowd=0)
        document["annotations"] += [
            dict(extra, id=90001, segmentation=[[1.0, 1.0, 5.0, 5.0]]),                   # 2 points
            dict(extra, id=90002, segmentation=[[1.0, 1.0, 9.0, 1.0, 9.0, 9.0], [3.0, 3.0]]),  # one bad part
            dict(extra, id=90003, bbox=[4.0, 4.0, 0.0, 6.0]),                             # zero width
        ]
        document["images"].append(dict(document["images"][0], id=777, file_name=document["images"][0]["file_name"]))
        assert image_id
    path = _variant_json(root, tmp_path, edit)
    kept = coco_data.read_coco(path, "train")
    assert kept.dropped["annotations_with_no_valid_polygon"] == 1
    assert kept.dropped["polygon_parts_with_fewer_than_3_points"] == 2
    assert kept.dropped["zero_area_boxes"] == 1
    baseline = coco_data.read_coco(root, "train")
    assert sum(len(r["class_ids"]) for r in kept.records) == sum(len(r["class_ids"]) for r in baseline.records) + 1
    assert "1 zero area boxes" in kept.summary()
    empty = [r for r in kept.records if not len(r["class_ids"])]
    assert any(r["image_id"] == 777 for r in empty)
    skipped = coco_data.read_coco(path, "train", skip_images_without_annotations=True)
    assert skipped.dropped["images_without_annotations_skipped"] == len(empty)
    assert all(len(r["class_ids"]) for r in skipped.records)
    capped = coco_data.read_coco(root, "train", max_instances=2)
    assert capped.dropped["instances_over_max_instances"] == sum(
        max(0, len(r["class_ids"]) - 2) for r in baseline.records)


def test_missing_annotation_file_is_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_val2017.json not found"):
        coco_data.read_coco(str(tmp_path), "val")


def _decoded(record):
    """The image file decoded by Pillow (libjpeg's accurate DCT), as torchvision's CocoDetection reads it."""
    from PIL import Image

    with Image.open(record["path"]) as image:
        return np.asarray(image.convert("RGB"))


def test_eval_pipeline_hands_decoded_images_and_the_resized_geometry(root, train):
    # 96x128 -> short side 120 (scale 1.25) -> 120x160: the model's size; the image itself stays 96x128 uint8.
    dataset = coco_data.make_dataset(train, batch_size=3, training=False, short_side=120, long_side=1000)
    batches = list(dataset)
    assert len(batches) == 3 and batches[-1]["image"].shape[0] == 2
    first = batches[0]
    assert first["image"].dtype == tf.uint8 and first["image"].shape == (3, *SIZE, 3)
    np.testing.assert_array_equal(first["image_size"], [[120, 160]] * 3)
    np.testing.assert_array_equal(first["original_size"], [list(SIZE)] * 3)
    for b in range(3):
        record = train.records[b]
        n = len(record["class_ids"])
        np.testing.assert_array_equal(first["image"][b], _decoded(record))
        assert first["image_id"][b] == record["image_id"]
        assert first["num_instances"][b] == n
        np.testing.assert_allclose(first["boxes"][b, :n], record["boxes"] * 1.25, rtol=1e-6)
        assert np.all(first["boxes"][b, n:] == 0) and np.all(first["class_ids"][b, n:] == 0)
        np.testing.assert_array_equal(first["class_ids"][b, :n], record["class_ids"])
        np.testing.assert_array_equal(first["masks"][b, :n], record["masks"])


def test_images_of_different_sizes_are_zero_padded_and_resized_by_the_rule(tmp_path):
    # Two folders of different image sizes, one split: 60x80 and 96x128 images in the same batch.
    small, large = str(tmp_path / "small"), str(tmp_path / "large")
    write_coco_sample(small, num_train=1, num_val=1, size=(60, 80), seed=1)
    write_coco_sample(large, num_train=1, num_val=1, size=SIZE, seed=2)
    split = coco_data.read_coco(small, "train", in_memory=True)
    split.records = split.records[:1] + coco_data.read_coco(large, "train", in_memory=True).records[:1]
    element = next(iter(coco_data.make_dataset(split, batch_size=2, training=False, short_side=50, long_side=70)))
    assert element["image"].shape == (2, *SIZE, 3)
    np.testing.assert_array_equal(element["image"][0, :60, :80], _decoded(split.records[0]))
    assert np.all(element["image"][0, 60:] == 0) and np.all(element["image"][0, :, 80:] == 0)
    np.testing.assert_array_equal(element["original_size"], [[60, 80], list(SIZE)])
    # torchvision's rule in plain Python floats (the scale and the products in float64, floored)
    expected = [(int(h * min(50 / min(h, w), 70 / max(h, w))), int(w * min(50 / min(h, w), 70 / max(h, w))))
                for h, w in [(60, 80), SIZE]]
    np.testing.assert_array_equal(element["image_size"], expected)


def test_the_model_input_of_an_element_is_the_resized_normalised_image(train):
    # Scale one: the detector's input is the decoded image normalised, zeros padding it to /32.
    from models.mask_rcnn.transform import detector_inputs

    element = next(iter(coco_data.make_dataset(train, batch_size=1, training=False, short_side=96, long_side=1000)))
    inputs = detector_inputs(element)
    assert inputs["images"].shape == (1, 96, 128, 3)
    pixels = _decoded(train.records[0]).astype(np.float64)
    np.testing.assert_allclose(inputs["images"][0], (pixels - MEAN) / STD, atol=1e-5)


def test_training_flip_mirrors_image_boxes_and_masks(train):
    kw = dict(short_side=120, long_side=1000)
    plain = {int(e["image_id"][0]): e for e in coco_data.make_dataset(train, batch_size=1, training=False, **kw)}
    flipped_seen = unflipped_seen = 0
    for element in coco_data.make_dataset(train, batch_size=1, training=True, seed=0, **kw).take(24):
        reference = plain[int(element["image_id"][0])]
        n = int(element["num_instances"][0])
        image, ref_image = element["image"][0].numpy(), reference["image"][0].numpy()
        np.testing.assert_array_equal(element["image_size"], reference["image_size"])
        if np.array_equal(image, ref_image):
            unflipped_seen += 1
            np.testing.assert_array_equal(element["boxes"], reference["boxes"])
            np.testing.assert_array_equal(element["masks"], reference["masks"])
            continue
        flipped_seen += 1
        np.testing.assert_array_equal(image, ref_image[:, ::-1])
        # Boxes are in the resized image's pixels: 128 * 1.25 = 160 wide.
        y1, x1, y2, x2 = reference["boxes"][0, :n].numpy().T
        np.testing.assert_allclose(element["boxes"][0, :n], np.stack([y1, 160 - x2, y2, 160 - x1], 1), atol=1e-4)
        np.testing.assert_array_equal(element["masks"][0, :n], reference["masks"][0, :n, :, ::-1])
        assert np.all(element["boxes"][0, n:] == 0)
    assert flipped_seen and unflipped_seen


def _gt_predictions(coco, image_ids):
    """Per-image predictions that are exactly the ground truth (non-crowd), score 1."""
    categories = coco_data.Categories.from_coco(coco)
    predictions = []
    for image_id in image_ids:
        anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
        masks = np.array([coco.annToMask(a) for a in anns]).reshape(-1, *SIZE)
        predictions.append({"image_id": image_id, "masks": masks,
                            "class_ids": categories.to_contiguous([a["category_id"] for a in anns]).reshape(-1),
                            "scores": np.ones(len(anns))})
    return predictions, categories


def test_results_json_loads_in_coco_and_perfect_masks_score_ap_1(train, tmp_path):
    coco = train.coco
    predictions, categories = _gt_predictions(coco, coco.getImgIds())
    results = coco_data.segm_results(predictions, categories)
    assert len(results) == sum(1 for a in coco.dataset["annotations"] if not a["iscrowd"])
    path = str(tmp_path / "segm_results.json")
    coco_data.write_results(path, results)
    with open(path) as f:
        loaded = json.load(f)
    assert all(set(r) == {"image_id", "category_id", "segmentation", "score"} for r in loaded)
    assert all(isinstance(r["segmentation"]["counts"], str) for r in loaded)
    assert {r["category_id"] for r in loaded} <= {1, 3, 18, 44, 62}
    coco.loadRes(path)  # what the official tooling does with the file
    metrics = coco_data.evaluate_segm(coco, loaded)
    assert metrics["segm_AP"] == pytest.approx(1.0)
    assert metrics["segm_AP50"] == pytest.approx(1.0) and metrics["segm_AP75"] == pytest.approx(1.0)
    assert all(metrics[k] in (pytest.approx(1.0), -1.0) for k in ("segm_APs", "segm_APm", "segm_APl"))


def test_results_take_masks_that_encode_themselves(train):
    """Masks with an rle() method (models.mask_rcnn.PastedMasks: each mask kept as its runs of pixels) give the
    same results as the dense [N, H, W] array."""
    from models.mask_rcnn import PastedMasks

    coco = train.coco
    predictions, categories = _gt_predictions(coco, coco.getImgIds())
    as_runs = [dict(p, masks=PastedMasks.from_dense(p["masks"])) for p in predictions]
    assert sum(len(p["masks"]) for p in as_runs) > 0
    assert coco_data.segm_results(as_runs, categories) == coco_data.segm_results(predictions, categories)


def test_misplaced_masks_lower_ap_and_no_results_score_zero(train):
    coco = train.coco
    predictions, categories = _gt_predictions(coco, coco.getImgIds())
    for p in predictions:
        p["masks"] = p["masks"][:, ::-1, ::-1].copy()  # masks rotated 180 degrees: mostly misplaced
    assert coco_data.evaluate_segm(coco, coco_data.segm_results(predictions, categories))["segm_AP"] < 0.5
    assert coco_data.evaluate_segm(coco, []) == {name: 0.0 for name in coco_data.SEGM_METRICS}

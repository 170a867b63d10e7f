"""Bad COCO input: one line naming the file and the image / annotation id, or skipped and counted with skip_bad.

Each case edits a copy of the built-in sample the way a broken export would, then
converts it (python -m data.coco prepare's code) and, where the JSON alone is at
fault, reads it with the in-memory reader too.
"""
import json
import os
import re
import shutil

import pytest

from data import coco as coco_data
from data.coco import command as coco_command, convert as coco_convert, records as coco_records
from data.coco.annotations import CocoFileNotFound, CocoInputError
from data.samples.coco import write_coco_sample

SIZE = (64, 96)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("coco"))
    write_coco_sample(path, num_train=6, num_val=1, size=SIZE, seed=2)
    return path


def _variant(root, tmp_path, edit_json=None, edit_images=None):
    """A copy of the sample's train split (annotations + images) with the edits applied; returns its folder."""
    data = tmp_path / "data"
    shutil.copytree(os.path.join(root, "annotations"), data / "annotations")
    shutil.copytree(os.path.join(root, "train2017"), data / "train2017")
    path = data / "annotations" / "instances_train2017.json"
    document = json.loads(path.read_text())
    if edit_json:
        edit_json(document)
    path.write_text(json.dumps(document))
    if edit_images:
        edit_images(data / "train2017", document)
    return str(data)


def _first(document, crowd=False):
    return next(a for a in document["annotations"] if bool(a["iscrowd"]) == crowd)


def _convert(data, tmp_path, **kw):
    return coco_convert.convert(*coco_data.split_paths(data, "train"), str(tmp_path / "records"), num_workers=1,
                                log=lambda line: None, **kw)


def _drop_key(key):
    def edit(document):
        del _first(document)[key]
    return edit


def _set(**values):
    def edit(document):
        _first(document).update(values)
    return edit


def _set_image(**values):
    def edit(document):
        document["images"][1].update(values)
    return edit


# (name, JSON edit, the message's fragment with {ann} / {image} for the edited ids, what skip_bad counts)
JSON_CASES = [
    ("no segmentation", _drop_key("segmentation"), "annotation {ann}: lacks segmentation", "bad annotations"),
    ("no bbox", _drop_key("bbox"), "annotation {ann}: lacks bbox", "bad annotations"),
    ("no category_id", _drop_key("category_id"), "annotation {ann}: lacks category_id", "bad annotations"),
    ("unknown category", _set(category_id=999),
     "annotation {ann}: (image {image}) category_id 999 is not in the file's categories", "bad annotations"),
    ("no such image", _set(image_id=424242), "annotation {ann}: points to image id 424242", "bad annotations"),
    ("negative box", _set(bbox=[4.0, 4.0, -3.0, 5.0]),
     "annotation {ann}: (image {image}) bbox [4.0, 4.0, -3.0, 5.0] has a negative width", "bad annotations"),
    ("odd polygon", _set(segmentation=[[1.0, 1.0, 9.0, 1.0, 9.0]]),
     "annotation {ann}: (image {image}) a polygon has an odd number", "bad annotations"),
    ("leaves the folder", _set_image(file_name="../secret.jpg"),
     "image {image2}: file_name '../secret.jpg' leaves the image folder", "bad images"),
]


def _ids(document):
    ann = _first(document)
    return dict(ann=ann["id"], image=ann["image_id"], image2=document["images"][1]["id"])


@pytest.mark.parametrize("name, edit, message, kind", JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_bad_json_is_one_line_naming_file_and_id_or_skipped(root, tmp_path, name, edit, message, kind):
    with open(os.path.join(root, "annotations", "instances_train2017.json")) as f:
        ids = _ids(json.load(f))
    data = _variant(root, tmp_path, edit)
    expected = re.escape("instances_train2017.json: " + message.format(**ids))
    for read in (lambda: coco_data.read_coco(data, "train", in_memory=True), lambda: _convert(data, tmp_path)):
        with pytest.raises(CocoInputError, match=expected) as caught:
            read()
        assert "\n" not in str(caught.value)
    manifest = _convert(data, tmp_path, skip_bad=True)
    summary = coco_records.open_records(str(tmp_path / "records")).summary()
    assert f"1 {kind} skipped" in summary
    assert summary == coco_data.read_coco(data, "train", skip_bad=True, in_memory=True).summary()
    assert manifest["num_images"] == 6 - (kind == "bad images")


def test_malformed_json(root, tmp_path):
    data = _variant(root, tmp_path)
    path = os.path.join(data, "annotations", "instances_train2017.json")
    with open(path, "w") as f:
        f.write('{"images": [')
    with pytest.raises(CocoInputError, match=re.escape(f"{path}: not valid JSON")):
        coco_data.read_coco(data, "train", in_memory=True)
    with pytest.raises(SystemExit) as caught:  # a str code: printed on stderr, exit status 1
        coco_command.main([data, "--split", "train"])
    assert str(caught.value.code).startswith(f"{path}: not valid JSON (")


def _image_edit(kind):
    def edit(folder, document):
        path = folder / document["images"][1]["file_name"]
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:400])
        elif kind == "not an image":
            path.write_bytes(b"")
        else:
            path.unlink()
    return edit


@pytest.mark.parametrize("kind", ["truncated", "not an image"])
def test_a_corrupt_image_is_named_with_its_id_or_skipped(root, tmp_path, kind, capsys):
    data = _variant(root, tmp_path, edit_images=_image_edit(kind))
    image = json.loads(open(os.path.join(data, "annotations", "instances_train2017.json")).read())["images"][1]
    path = os.path.join(data, "train2017", image["file_name"])
    with pytest.raises(CocoInputError, match=re.escape(f"{path}: image {image['id']} cannot be decoded")):
        _convert(data, tmp_path)
    with pytest.raises(SystemExit) as caught:  # a str code: printed on stderr, exit status 1
        coco_command.main([data, "--split", "train", "--workers", "1"])
    assert str(caught.value.code).startswith(f"{path}: image {image['id']} cannot be decoded")
    _convert(data, tmp_path, skip_bad=True)
    records = coco_records.open_records(str(tmp_path / "records"))
    assert records.num_images == 5 and "1 bad images skipped" in records.summary()
    assert image["id"] not in [r["image_id"] for r in _ids_in(records)]


def _ids_in(records):
    dataset = coco_data.make_dataset(records, batch_size=1, training=False, short_side=32, long_side=64)
    return [{"image_id": int(e["image_id"][0])} for e in dataset]


def test_a_size_other_than_the_json_says(root, tmp_path):
    data = _variant(root, tmp_path, _set_image(height=SIZE[0] + 4))
    image = json.loads(open(os.path.join(data, "annotations", "instances_train2017.json")).read())["images"][1]
    message = re.escape(f"image {image['id']} is {SIZE[0]}x{SIZE[1]}, the annotation file says {SIZE[0] + 4}x{SIZE[1]}")
    with pytest.raises(CocoInputError, match=message):
        _convert(data, tmp_path)
    with pytest.raises(CocoInputError, match=message):
        coco_data.read_coco(data, "train", in_memory=True)
    assert _convert(data, tmp_path, skip_bad=True)["num_images"] == 5


def test_a_missing_image_file(root, tmp_path):
    data = _variant(root, tmp_path, edit_images=_image_edit("missing"))
    with pytest.raises(CocoFileNotFound, match="not found: .*instances_train2017.json lists it"):
        _convert(data, tmp_path)
    assert _convert(data, tmp_path, skip_bad=True)["num_images"] == 5


def test_official_quirks_are_dropped_and_counted_not_errors(root, tmp_path):
    """train2017 has a 0-pixel-high box with a 2-point polygon (annotation 918): converting COCO must not stop."""
    def edit(document):
        ann = dict(_first(document), id=918, bbox=[296.65, 38.33, 1.03, 0.0],
                   segmentation=[[296.65, 38.33, 296.65, 38.33, 297.68, 38.33, 297.68, 38.33]])
        short = dict(_first(document), id=919, segmentation=[[1.0, 1.0, 5.0, 5.0]])
        document["annotations"] += [ann, short]
    data = _variant(root, tmp_path, edit)
    _convert(data, tmp_path)
    summary = coco_records.open_records(str(tmp_path / "records")).summary()
    assert "1 zero area boxes" in summary and "1 annotations with no valid polygon" in summary
    assert summary == coco_data.read_coco(data, "train", in_memory=True).summary()

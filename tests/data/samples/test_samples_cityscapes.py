"""The built-in Cityscapes sample: official layout and encodings.

References: the official label definitions (cityscapesscripts.helpers.labels)
and the file layout/encodings of the official gtFine release (8-bit labelIds
and labelTrainIds, RGBA colour images, 16-bit instanceIds = labelId * 1000 + k).
"""
import filecmp
import os
import re

import numpy as np
import pytest
from cityscapesscripts.helpers import labels as official
from PIL import Image

from data import cityscapes, samples

SIZE = (128, 256)
NUM = {"train": 6, "val": 3}
GT_SUFFIXES = ("labelIds", "labelTrainIds", "color", "instanceIds")
STEM = re.compile(r"^(?P<city>[a-z]+)_\d{6}_\d{6}$")


def write(path, seed=0):
    samples.main(["cityscapes", str(path), "--num-train", str(NUM["train"]), "--num-val", str(NUM["val"]),
                  "--size", f"{SIZE[0]}x{SIZE[1]}", "--seed", str(seed)])
    return str(path)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write(tmp_path_factory.mktemp("sample") / "cityscapes")


def stems(root, split):
    """{stem: city} from the image file names, checked against the official naming."""
    found = {}
    for city in os.listdir(os.path.join(root, "leftImg8bit", split)):
        for name in os.listdir(os.path.join(root, "leftImg8bit", split, city)):
            assert name.endswith("_leftImg8bit.png"), name
            stem = name[: -len("_leftImg8bit.png")]
            match = STEM.match(stem)
            assert match and match["city"] == city, name
            found[stem] = city
    return found


def read_gt(root, split, stem, suffix):
    city = stem.split("_")[0]
    return Image.open(os.path.join(root, "gtFine", split, city, f"{stem}_gtFine_{suffix}.png"))


@pytest.mark.parametrize("split", ["train", "val"])
def test_cli_writes_exactly_the_official_layout(root, split):
    found = stems(root, split)
    assert len(found) == NUM[split] and 2 <= len(set(found.values())) <= 3
    expected_gt = {os.path.join(city, f"{stem}_gtFine_{s}.png") for stem, city in found.items() for s in GT_SUFFIXES}
    gt_dir = os.path.join(root, "gtFine", split)
    got_gt = {os.path.join(city, name)
              for city in os.listdir(gt_dir) for name in os.listdir(os.path.join(gt_dir, city))}
    assert got_gt == expected_gt
    for stem, city in found.items():
        image = Image.open(os.path.join(root, "leftImg8bit", split, city, f"{stem}_leftImg8bit.png"))
        assert image.mode == "RGB" and image.size == SIZE[::-1]
        modes = {s: read_gt(root, split, stem, s).mode for s in GT_SUFFIXES}
        # As the official release: 8-bit ids, RGBA colours, 16-bit instances.
        assert modes == {"labelIds": "L", "labelTrainIds": "L", "color": "RGBA", "instanceIds": "I;16"}


def test_readers_accept_the_sample(root):
    for split in ("train", "val"):
        examples = cityscapes.find_examples(root, split)
        assert sorted(e.id for e in examples) == sorted(stems(root, split))
    element = next(iter(cityscapes.read_folder(root, "val")))
    assert element["image"].shape == SIZE + (3,) and element["label"].shape == SIZE
    assert element["label"].dtype.name == "uint8"


@pytest.mark.parametrize("split", ["train", "val"])
def test_label_files_agree_through_the_official_table(root, split):
    train_classes, void_ids = set(), set()
    for stem in stems(root, split):
        label_ids = np.asarray(read_gt(root, split, stem, "labelIds"))
        ids = np.unique(label_ids)
        assert all(int(i) in official.id2label for i in ids)

        train_ids = np.asarray(read_gt(root, split, stem, "labelTrainIds"))
        expected = np.zeros_like(label_ids)
        for i in ids:
            train_id = official.id2label[int(i)].trainId
            expected[label_ids == i] = train_id if 0 <= train_id < 255 else 255
        np.testing.assert_array_equal(train_ids, expected)

        color = np.asarray(read_gt(root, split, stem, "color"))
        np.testing.assert_array_equal(color[..., 3], 255)
        for i in ids:
            np.testing.assert_array_equal(color[label_ids == i, :3],
                                          np.broadcast_to(official.id2label[int(i)].color, ((label_ids == i).sum(), 3)))

        instances = np.asarray(read_gt(root, split, stem, "instanceIds")).astype(np.int64)
        numbered = instances >= 1000
        np.testing.assert_array_equal(np.where(numbered, instances // 1000, instances), label_ids)
        has_instances = np.vectorize(lambda i: official.id2label[int(i)].hasInstances)(label_ids)
        np.testing.assert_array_equal(numbered, has_instances)
        for i in np.unique(label_ids[numbered]):
            # Instances of a class are numbered 0, 1, ... (a number may be fully occluded).
            ks = np.unique(instances[label_ids == i] % 1000)
            assert ks.max() < 20

        train_classes |= set(np.unique(train_ids).tolist()) - {255}
        void_ids |= {int(i) for i in ids if official.id2label[int(i)].ignoreInEval}
    assert len(train_classes) >= 10, sorted(train_classes)
    assert void_ids & {0, 1, 4, 5}, "the sample must exercise the ignore label"


def test_images_are_not_a_colour_lookup_of_the_labels(root):
    # Texture, per-object shifts, brightness and noise: one class has many colours.
    stem = sorted(stems(root, "train"))[0]
    image = np.asarray(Image.open(os.path.join(root, "leftImg8bit", "train", stem.split("_")[0],
                                               f"{stem}_leftImg8bit.png"))).astype(np.float64)
    label_ids = np.asarray(read_gt(root, "train", stem, "labelIds"))
    road = image[label_ids == official.name2label["road"].id]
    assert road.shape[0] > 100 and road.std(axis=0).min() > 3


def test_refuses_to_write_over_a_sample(root):
    some_file = os.path.join(root, "gtFine", "val")
    before = {name: os.path.getmtime(os.path.join(dirpath, name))
              for dirpath, _, names in os.walk(some_file) for name in names}
    with pytest.raises(SystemExit) as exit_info:  # a str code: that one line on stderr, exit status 1
        write(root, seed=1)
    assert exit_info.value.code == (f"{root}: already holds leftImg8bit/ (a Cityscapes sample or dataset); "
                                    "choose an empty or new folder")
    after = {name: os.path.getmtime(os.path.join(dirpath, name))
             for dirpath, _, names in os.walk(some_file) for name in names}
    assert after == before


def test_empty_folder_is_fine_and_seed_decides_the_content(tmp_path, root):
    (tmp_path / "same").mkdir()  # an existing empty folder is accepted
    same, other = write(tmp_path / "same", seed=0), write(tmp_path / "other", seed=1)
    name = os.path.join("gtFine", "train", "aachen", "aachen_000000_000019_gtFine_labelIds.png")
    assert filecmp.cmp(os.path.join(root, name), os.path.join(same, name), shallow=False)
    assert not filecmp.cmp(os.path.join(root, name), os.path.join(other, name), shallow=False)

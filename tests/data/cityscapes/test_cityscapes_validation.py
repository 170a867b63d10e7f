"""Cityscapes reader on bad folders and files: one line naming the path, --skip-bad, counted out-of-table labels.

The files are written here with Pillow in the official layout; expected pixels come from NumPy.
"""
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data import cityscapes
from data.images import BadImageError

SIZE = (16, 24)


def _write_example(root, split, example_id, *, image=None, label=None):
    rng = np.random.default_rng(len(example_id) + sum(map(ord, example_id)))
    city = example_id.split("_")[0]
    image = rng.integers(0, 256, SIZE + (3,), dtype=np.uint8) if image is None else image
    label = rng.integers(0, 34, SIZE, dtype=np.uint8) if label is None else label
    paths = (os.path.join(root, "leftImg8bit", split, city, f"{example_id}_leftImg8bit.png"),
             os.path.join(root, "gtFine", split, city, f"{example_id}_gtFine_labelIds.png"))
    for path, array in zip(paths, (image, label)):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(array).save(path)
    return paths


def _one_line(error):
    assert "\n" not in str(error.value)
    return str(error.value)


def test_missing_empty_and_incomplete_roots_name_the_folder(tmp_path):
    root = str(tmp_path / "cityscapes")
    with pytest.raises(FileNotFoundError, match=f"{root}: no such folder; pass the Cityscapes root"):
        cityscapes.find_examples(root, "train")
    os.makedirs(root)
    with pytest.raises(FileNotFoundError, match=f"{root}: empty folder"):
        cityscapes.find_examples(root, "train")
    os.makedirs(os.path.join(root, "gtFine"))
    with pytest.raises(FileNotFoundError, match=f"{root}: no leftImg8bit/ folder in it"):
        cityscapes.find_examples(root, "train")
    _write_example(root, "val", "aachen_000000_000019")
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/train: no such folder \(splits there: val\)") as e:
        cityscapes.find_examples(root, "train")
    _one_line(e)
    os.makedirs(os.path.join(root, "leftImg8bit", "test", "berlin"))
    Image.fromarray(np.zeros(SIZE + (3,), np.uint8)).save(
        os.path.join(root, "leftImg8bit", "test", "berlin", "berlin_000000_000019_leftImg8bit.png"))
    with pytest.raises(FileNotFoundError, match="gtFine/test: no such folder"):
        cityscapes.find_examples(root, "test")
    assert len(cityscapes.find_examples(root, "test", with_labels=False)) == 1


def test_bad_files_stop_with_their_path_or_are_skipped_and_counted(tmp_path, capsys):
    root = str(tmp_path)
    good = "aachen_000000_000019"
    _write_example(root, "train", good)
    truncated, _ = _write_example(root, "train", "aachen_000001_000019")
    with open(truncated, "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    _, wrong_size = _write_example(root, "train", "bonn_000000_000019",
                                   label=np.zeros((SIZE[0], SIZE[1] - 1), np.uint8))
    _, missing = _write_example(root, "train", "bonn_000001_000019")
    os.remove(missing)
    _, colour_label = _write_example(root, "train", "koeln_000000_000019", label=np.zeros(SIZE + (3,), np.uint8))

    with pytest.raises(BadImageError, match=f"{truncated}: truncated PNG") as error:
        cityscapes.read_folder(root, "train")
    _one_line(error)
    # each kind alone stops the listing with its own line
    for bad, message in ((wrong_size, "label is 16x23, its image .* is 16x24"), (missing, "missing label"),
                         (colour_label, "must be an 8-bit single-channel PNG")):
        alone = str(tmp_path / "alone" / os.path.basename(bad))
        example_id = os.path.basename(bad).replace("_gtFine_labelIds.png", "")
        _, label = _write_example(alone, "train", example_id)
        if os.path.exists(bad):
            os.replace(bad, label)
        else:
            os.remove(label)
        with pytest.raises((BadImageError, FileNotFoundError), match=message) as error:
            cityscapes.find_examples(alone, "train")
        assert _one_line(error).startswith(label)
        if os.path.exists(label):
            os.replace(label, bad)
        else:
            os.remove(os.path.join(alone, "leftImg8bit", "train", example_id.split("_")[0],
                                   example_id + "_leftImg8bit.png"))

    capsys.readouterr()
    elements = list(cityscapes.read_folder(root, "train", skip_bad=True))
    assert [e["id"].numpy().decode() for e in elements] == [good]
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 5
    assert all(line.startswith("warning: skipped: ") for line in warnings[:4])
    assert warnings[-1] == "warning: skipped 4 of 5 train examples with bad files (--skip-bad)"


def test_greyscale_rgba_and_16_bit_images_decode_to_rgb(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, SIZE, dtype=np.uint8)
    rgba = rng.integers(0, 256, SIZE + (4,), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, SIZE, dtype=np.uint16)
    _write_example(str(tmp_path), "val", "a_000000_000019", image=grey)
    _write_example(str(tmp_path), "val", "b_000000_000019", image=rgba)
    _write_example(str(tmp_path), "val", "c_000000_000019", image=grey16)
    decoded = [e["image"].numpy() for e in cityscapes.read_folder(str(tmp_path), "val")]
    np.testing.assert_array_equal(decoded[0], np.repeat(grey[..., None], 3, -1))
    np.testing.assert_array_equal(decoded[1], rgba[..., :3])  # alpha dropped
    np.testing.assert_array_equal(decoded[2], np.repeat((grey16 >> 8).astype(np.uint8)[..., None], 3, -1))


def test_label_ids_outside_the_table_are_ignored_and_counted(tmp_path, capfd):
    label = np.full(SIZE, 7, np.uint8)  # road
    label[0, :5] = 40  # 5 pixels of an id the table does not have
    label[1, :2] = 200
    _, label_path = _write_example(str(tmp_path), "val", "aachen_000000_000019", label=label)
    _write_example(str(tmp_path), "val", "aachen_000001_000019")  # ids 0..33 only: no warning
    capfd.readouterr()
    batches = list(cityscapes.eval_pipeline(cityscapes.read_folder(str(tmp_path), "val")))
    train_ids = batches[0]["label"].numpy()[0]
    assert (train_ids[0, :5] == 255).all() and (train_ids[1, :2] == 255).all() and (train_ids[2:] == 0).all()
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {label_path}: 7 label pixels have labelIds outside the Cityscapes table "
                        "(> 33); they are ignored"]


def test_damage_inside_a_png_is_mapped_back_to_the_file(tmp_path):
    root = str(tmp_path)
    rng = np.random.default_rng(2)
    _write_example(root, "val", "aachen_000000_000019")
    bad, _ = _write_example(root, "val", "aachen_000001_000019",
                            image=rng.integers(0, 256, SIZE + (3,), dtype=np.uint8))
    with open(bad, "rb") as f:
        data = bytearray(f.read())
    start = data.index(b"IDAT") + 30
    data[start:start + 40] = bytes(40)  # the end marker stays: only decoding finds it
    with open(bad, "wb") as f:
        f.write(bytes(data))
    examples = cityscapes.find_examples(root, "val")
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        list(cityscapes.read_folder(root, "val"))
    assert str(cityscapes.explain_decode_error(error.value, examples)).startswith(f"{bad}: damaged PNG data")
    assert cityscapes.explain_decode_error(error.value) is None  # nothing to search


def test_label_size_mismatch_in_tfds_records_names_the_example():
    # TFDS elements skip the listing's header checks; the in-graph check names the example.
    def encode(array):
        return tf.io.encode_png(array)

    element = {"id": tf.constant("aachen_000000_000019"), "image": encode(np.zeros((4, 6, 3), np.uint8)),
               "label": encode(np.zeros((4, 5, 1), np.uint8))}
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        list(tf.data.Dataset.from_tensors(element).map(cityscapes.readers._decode))
    explained = cityscapes.explain_decode_error(error.value)
    assert str(explained) == "aachen_000000_000019: label size differs from its image"

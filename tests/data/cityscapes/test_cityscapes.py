"""Cityscapes label table, readers and pipelines.

References: the official label definitions (cityscapesscripts.helpers.labels),
pixels written here with PIL in the official folder/zip layouts, and NumPy
float64 for the normalization.
"""
import io
import os
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from cityscapesscripts.helpers import labels as official
from PIL import Image

from data import cityscapes

# Official trainIds 255 and -1 both mean "not trained on".
TRAINED = sorted((l for l in official.labels if 0 <= l.trainId < 255), key=lambda l: l.trainId)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255


def official_train_id(label_id):
    label = official.id2label.get(int(label_id))
    return label.trainId if label is not None and 0 <= label.trainId < 255 else 255


def write_split(root, split, scenes, with_labels=True):
    """Writes {id: (image uint8 [H, W, 3], labelIds uint8 [H, W])} in the official layout."""
    for example_id, (image, label) in scenes.items():
        city = example_id.split("_")[0]
        image_dir = os.path.join(root, "leftImg8bit", split, city)
        os.makedirs(image_dir, exist_ok=True)
        Image.fromarray(image).save(os.path.join(image_dir, f"{example_id}_leftImg8bit.png"))
        if with_labels:
            label_dir = os.path.join(root, "gtFine", split, city)
            os.makedirs(label_dir, exist_ok=True)
            Image.fromarray(label).save(os.path.join(label_dir, f"{example_id}_gtFine_labelIds.png"))
            # The official zip also holds these; the reader must not take them for labels.
            Image.fromarray(label).save(os.path.join(label_dir, f"{example_id}_gtFine_instanceIds.png"))
            Image.fromarray(np.zeros(label.shape + (3,), np.uint8)).save(
                os.path.join(label_dir, f"{example_id}_gtFine_color.png"))


def random_scenes(ids, size=(24, 40), seed=0):
    rng = np.random.default_rng(seed)
    return {
        i: (rng.integers(0, 256, size + (3,), dtype=np.uint8), rng.integers(0, 34, size, dtype=np.uint8))
        for i in ids
    }


IDS = ["aachen_000000_000019", "aachen_000001_000019", "bonn_000000_000019", "zurich_000003_000019"]


@pytest.fixture
def root(tmp_path):
    scenes = random_scenes(IDS)
    write_split(str(tmp_path), "train", scenes)
    return str(tmp_path), scenes


# --- label table ---------------------------------------------------------------

def test_label_table_is_the_official_one():
    assert [(l.name, l.id, l.train_id, l.color) for l in cityscapes.LABELS] == [
        (l.name, l.id, l.trainId, l.color) for l in official.labels
    ]
    assert cityscapes.NUM_CLASSES == 19
    assert cityscapes.CLASS_NAMES == tuple(l.name for l in TRAINED)


def test_to_train_ids_on_every_uint8_value_numpy_and_tensor():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = np.vectorize(official_train_id)(values).astype(np.uint8)
    got_numpy = cityscapes.to_train_ids(values)
    got_tensor = cityscapes.to_train_ids(tf.constant(values))
    assert isinstance(got_numpy, np.ndarray) and got_numpy.dtype == np.uint8
    assert got_tensor.dtype == tf.uint8 and got_tensor.shape == (16, 16)
    np.testing.assert_array_equal(got_numpy, expected)
    np.testing.assert_array_equal(got_tensor.numpy(), expected)


def test_to_train_ids_out_of_range_is_ignored():
    values = np.array([-1, 256, 1000, 26], np.int32)  # -1 is the official license plate id
    np.testing.assert_array_equal(cityscapes.to_train_ids(values), [255, 255, 255, 13])
    np.testing.assert_array_equal(cityscapes.to_train_ids(tf.constant(values)).numpy(), [255, 255, 255, 13])


def test_to_label_ids_maps_classes_back_and_ignore_to_unlabeled():
    train_ids = np.array([[t for t in range(19)] + [255, 19, -3]], np.int64)
    expected = np.array([[official.trainId2label[t].id for t in range(19)] + [0, 0, 0]], np.int64)
    np.testing.assert_array_equal(cityscapes.to_label_ids(train_ids), expected)
    got = cityscapes.to_label_ids(tf.argmax(tf.one_hot(train_ids[0, :19], 19), axis=-1))
    assert got.dtype == tf.int64
    np.testing.assert_array_equal(got.numpy(), expected[0, :19])
    assert cityscapes.to_label_ids(np.uint8(255)) == official.name2label["unlabeled"].id


def test_class_colors_are_the_official_train_id_palette():
    assert cityscapes.CLASS_COLORS.dtype == np.uint8
    np.testing.assert_array_equal(cityscapes.CLASS_COLORS, [official.trainId2label[t].color for t in range(19)])


# --- folder reader -------------------------------------------------------------

def test_find_examples_lists_the_official_layout(root):
    path, _ = root
    examples = cityscapes.find_examples(path, "train")
    assert [e.id for e in examples] == IDS
    bonn = "bonn_000000_000019"
    assert examples[2].image_path == os.path.join(path, f"leftImg8bit/train/bonn/{bonn}_leftImg8bit.png")
    assert examples[2].label_path == os.path.join(path, f"gtFine/train/bonn/{bonn}_gtFine_labelIds.png")


def test_find_examples_errors_name_the_missing_path(tmp_path, root):
    path, _ = root
    with pytest.raises(FileNotFoundError, match="leftImg8bit/val: no such folder"):
        cityscapes.find_examples(path, "val")
    os.makedirs(os.path.join(path, "leftImg8bit", "test"))
    with pytest.raises(FileNotFoundError, match="leftImg8bit/test: no <city>"):
        cityscapes.find_examples(path, "test")
    os.remove(os.path.join(path, "gtFine/train/bonn/bonn_000000_000019_gtFine_labelIds.png"))
    with pytest.raises(FileNotFoundError, match="bonn_000000_000019_gtFine_labelIds.png: missing label"):
        cityscapes.find_examples(path, "train")


def test_read_folder_without_labels_for_the_test_split(tmp_path):
    write_split(str(tmp_path), "test", random_scenes(IDS[:2]), with_labels=False)
    elements = list(cityscapes.read_folder(str(tmp_path), "test", with_labels=False))
    assert [e["id"].numpy().decode() for e in elements] == IDS[:2]
    assert all(set(e) == {"id", "image"} for e in elements)


def test_read_folder_decodes_the_files_pixel_for_pixel(root):
    path, scenes = root
    elements = list(cityscapes.read_folder(path, "train"))
    assert [e["id"].numpy().decode() for e in elements] == IDS
    for element in elements:
        image, label = scenes[element["id"].numpy().decode()]
        assert element["image"].dtype == tf.uint8 and element["label"].dtype == tf.uint8
        np.testing.assert_array_equal(element["image"].numpy(), image)
        np.testing.assert_array_equal(element["label"].numpy(), label)


def test_read_folder_shards_before_shuffling_and_reshuffles_each_epoch(tmp_path):
    ids = [f"bonn_{i:06d}_000019" for i in range(8)]
    write_split(str(tmp_path), "train", random_scenes(ids, size=(4, 4)))

    def epoch_ids(dataset):
        return [e["id"].numpy().decode() for e in dataset]

    shards = [
        epoch_ids(cityscapes.read_folder(str(tmp_path), "train",
                                         input_context=tf.distribute.InputContext(2, i, 2)))
        for i in range(2)
    ]
    assert sorted(shards[0] + shards[1]) == ids and not set(shards[0]) & set(shards[1])

    dataset = cityscapes.read_folder(str(tmp_path), "train", shuffle=True, seed=7)
    first, second = epoch_ids(dataset), epoch_ids(dataset)
    assert sorted(first) == ids and sorted(second) == ids and first != second
    assert epoch_ids(cityscapes.read_folder(str(tmp_path), "train", shuffle=True, seed=7)) == first


def test_label_of_another_size_is_an_error_naming_the_label_before_decoding(tmp_path):
    scenes = random_scenes(IDS[:1])
    image, label = scenes[IDS[0]]
    write_split(str(tmp_path), "train", {IDS[0]: (image, label[:-1])})
    with pytest.raises(ValueError, match=f"{IDS[0]}_gtFine_labelIds.png: label is 23x40, its image .* is 24x40"):
        cityscapes.read_folder(str(tmp_path), "train")


# --- pipelines -----------------------------------------------------------------

def test_eval_pipeline_normalizes_and_converts_to_train_ids(root):
    path, scenes = root
    batches = list(cityscapes.eval_pipeline(cityscapes.read_folder(path, "train"), batch_size=3))
    assert [b["image"].shape[0] for b in batches] == [3, 1]
    for batch in batches:
        assert batch["image"].dtype == tf.float32 and batch["label"].dtype == tf.int32
        for example_id, image, label in zip(*(batch[k].numpy() for k in ("id", "image", "label"))):
            raw_image, raw_label = scenes[example_id.decode()]
            np.testing.assert_allclose(image, (raw_image - IMAGENET_MEAN) / IMAGENET_STD, atol=1e-5)
            np.testing.assert_array_equal(label, np.vectorize(official_train_id)(raw_label))


def _painted_scene(size, seed):
    """Blocks of trained classes; the image shows each block in its class colour."""
    rng = np.random.default_rng(seed)
    block_ids = rng.choice([l.id for l in TRAINED], size=(size[0] // 8, size[1] // 8))
    label = np.kron(block_ids, np.ones((8, 8), np.int64)).astype(np.uint8)
    colors = np.array([official.id2label[i].color for i in range(34)], np.uint8)
    return colors[label], label


def test_train_pipeline_batches_aligned_augmented_crops(tmp_path):
    scenes = {i: _painted_scene((32, 48), seed=n) for n, i in enumerate(IDS)}
    write_split(str(tmp_path), "train", scenes)
    examples = cityscapes.read_folder(str(tmp_path), "train")
    # The recipe without rotation and blur, which mix colours across block borders
    # (test_cityscapes_augment_extra.py checks those on larger blocks).
    old_recipe = dict(rotation_degrees=0, blur_prob=0)
    dataset = cityscapes.train_pipeline(examples, batch_size=2, crop_size=(40, 40), seed=3, **old_recipe)

    assert dataset.element_spec == (
        tf.TensorSpec([2, 40, 40, 3], tf.float32), tf.TensorSpec([2, 40, 40], tf.int32))
    first = [(i.numpy(), l.numpy()) for i, l in dataset]
    second = [(i.numpy(), l.numpy()) for i, l in dataset]
    again = [(i.numpy(), l.numpy()) for i, l in
             cityscapes.train_pipeline(examples, batch_size=2, crop_size=(40, 40), seed=3, **old_recipe)]
    assert len(first) == 2
    for (a_image, a_label), (b_image, b_label) in zip(first, again):
        np.testing.assert_array_equal(a_image, b_image)
        np.testing.assert_array_equal(a_label, b_label)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, second))

    colors = np.array([l.color for l in TRAINED] + [(0, 0, 0)], np.float64)
    matched = total = 0
    for image, label in first + second:
        rgb = image * IMAGENET_STD + IMAGENET_MEAN
        padding = label == 255  # the scenes have no void pixels: 255 can only be padding
        np.testing.assert_allclose(rgb[padding], np.tile(IMAGENET_MEAN, (padding.sum(), 1)), atol=1e-3)
        assert set(np.unique(label[~padding])) <= set(range(19))
        close = np.all(np.abs(rgb - colors[np.minimum(label, 19)]) < 0.5, axis=-1)
        # Only pixels on block borders may blend colours (how many depends on the
        # scales drawn): check the others, whose 8 neighbours share the class.
        edged = np.pad(label, [(0, 0), (1, 1), (1, 1)], mode="edge")  # a batch [2, 40, 40]
        interior = np.all([edged[:, 1 + dy:41 + dy, 1 + dx:41 + dx] == label
                           for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0) & ~padding
        matched += np.sum(close & interior)
        total += np.sum(interior)
    assert total > 1000 and matched / total > 0.95


def test_train_pipeline_feeds_two_replicas(two_replica_strategy):
    strategy = two_replica_strategy  # one per process: see tests/conftest.py
    scenes = {i: _painted_scene((16, 16), seed=n) for n, i in enumerate(IDS)}

    def dataset_fn(ctx):
        elements = tf.data.Dataset.from_tensor_slices({
            "id": list(scenes), "image": np.stack([s[0] for s in scenes.values()]),
            "label": np.stack([s[1] for s in scenes.values()])})
        return cityscapes.train_pipeline(elements, batch_size=ctx.get_per_replica_batch_size(4),
                                         crop_size=(8, 8), seed=ctx.input_pipeline_id)

    images, labels = next(iter(strategy.distribute_datasets_from_function(dataset_fn)))
    per_replica = strategy.experimental_local_results(images)
    assert len(per_replica) == 2 and all(t.shape == (2, 8, 8, 3) for t in per_replica)
    assert all(t.shape == (2, 8, 8) for t in strategy.experimental_local_results(labels))


# --- TFDS reader ---------------------------------------------------------------

def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_read_tfds_gives_the_same_elements_as_read_folder(tmp_path):
    # TFDS declares 1024x2048 images; flat blocks keep the PNGs small.
    scenes = {i: tuple(a.repeat(128, axis=0).repeat(128, axis=1)
                       for a in random_scenes([i], size=(8, 16), seed=n)[i])
              for n, i in enumerate(IDS[:2])}
    manual = tmp_path / "manual"
    manual.mkdir()
    with zipfile.ZipFile(manual / "leftImg8bit_trainvaltest.zip", "w") as images, \
            zipfile.ZipFile(manual / "gtFine_trainvaltest.zip", "w") as labels:
        for split, example_id in [("train", IDS[0]), ("val", IDS[1]), ("test", IDS[1])]:
            city = example_id.split("_")[0]
            image, label = scenes[example_id]
            images.writestr(f"leftImg8bit/{split}/{city}/{example_id}_leftImg8bit.png", _png(image))
            labels.writestr(f"gtFine/{split}/{city}/{example_id}_gtFine_labelIds.png", _png(label))

    elements = list(cityscapes.read_tfds("val", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual)))
    assert len(elements) == 1 and elements[0]["id"].numpy().decode() == IDS[1]
    np.testing.assert_array_equal(elements[0]["image"].numpy(), scenes[IDS[1]][0])
    np.testing.assert_array_equal(elements[0]["label"].numpy(), scenes[IDS[1]][1])
    unlabeled = next(iter(cityscapes.read_tfds("test", data_dir=str(tmp_path / "tfds"), with_labels=False)))
    assert set(unlabeled) == {"id", "image"}


def test_read_tfds_without_the_zips_names_the_manual_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: put leftImg8bit_trainvaltest.zip"):
        cityscapes.read_tfds("train", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path))
    with pytest.raises(ValueError, match="split must be one of"):
        cityscapes.read_tfds("validation", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path))

"""COCO records: conversion round trip, the reader against today's in-memory pipeline, sharding, resuming.

References: pycocotools annToMask with the float64 box-crop reference of
test_coco, tf.train.Example parsed by protobuf (not by the reader), and the
in-memory route data.coco.read_coco + make_dataset.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from test_coco import _bilinear_crop_reference

from data import coco as coco_data
from data.coco import convert as coco_convert, records as coco_records
from data.samples.coco import write_coco_sample

SIZE = (96, 128)
ROOT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("coco"))
    write_coco_sample(path, num_train=20, num_val=4, size=SIZE, seed=5)
    # One instance as compressed RLE (str counts, as JSON holds it), so every encoding is converted.
    ann_path = os.path.join(path, "annotations", "instances_train2017.json")
    with open(ann_path) as f:
        document = json.load(f)
    ann = next(a for a in document["annotations"] if not a["iscrowd"] and len(a["segmentation"]) == 1)
    rle = mask_utils.encode(np.asfortranarray(COCO(ann_path).annToMask(ann)))
    ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    with open(ann_path, "w") as f:
        json.dump(document, f)
    return path


@pytest.fixture(scope="module")
def records(root, tmp_path_factory):
    """The train split in 5 shards of 4 images."""
    out = str(tmp_path_factory.mktemp("records") / "train")
    coco_convert.convert(*coco_data.split_paths(root, "train"), out, images_per_shard=4, num_workers=1,
                         log=lambda line: None)
    return coco_records.open_records(out)


def _examples(records_dir):
    for name in sorted(os.listdir(records_dir)):
        if name.endswith(".tfrecord"):
            for serialized in tf.data.TFRecordDataset(os.path.join(records_dir, name)).as_numpy_iterator():
                yield tf.train.Example.FromString(serialized).features.feature


def _messages(path):
    """The Examples of one shard (protobuf map order may differ between processes: compare messages, not bytes)."""
    return [tf.train.Example.FromString(s) for s in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()]


def test_records_hold_the_images_and_masks_annToMask_gives(root, records):
    coco = COCO(os.path.join(root, "annotations", "instances_train2017.json"))
    categories = coco_data.Categories.from_coco(coco)
    kinds, image_ids = set(), []
    for feature in _examples(records.records_dir):
        image_id = feature["image/id"].int64_list.value[0]
        image_ids.append(image_id)
        info = coco.imgs[image_id]
        with open(os.path.join(root, "train2017", info["file_name"]), "rb") as f:
            assert feature["image/encoded"].bytes_list.value[0] == f.read()
        anns = coco.imgToAnns[image_id]
        instances = [a for a in anns if not a["iscrowd"]]
        boxes = np.array(feature["instances/boxes"].float_list.value).reshape(-1, 4)
        masks = np.frombuffer(feature["instances/masks"].bytes_list.value[0], np.uint8).reshape(-1, 56, 56)
        assert len(boxes) == len(masks) == len(instances)
        np.testing.assert_array_equal(feature["instances/class_ids"].int64_list.value,
                                      categories.to_contiguous([a["category_id"] for a in instances]))
        for ann, box, crop in zip(instances, boxes, masks):
            x, y, w, h = ann["bbox"]
            np.testing.assert_allclose(box, [y, x, y + h, x + w], atol=1e-4)
            reference = _bilinear_crop_reference(coco.annToMask(ann).astype(np.float64), [y, x, y + h, x + w], 56)
            assert np.abs(crop / 255.0 - reference).max() <= 0.5 / 255 + 1e-6
            segm = ann["segmentation"]
            kinds.add("rle" if isinstance(segm, dict) else "multi-polygon" if len(segm) > 1 else "polygon")
        crowd = np.array(feature["crowd/boxes"].float_list.value).reshape(-1, 4)
        expected_crowd = [[a["bbox"][1], a["bbox"][0], a["bbox"][1] + a["bbox"][3], a["bbox"][0] + a["bbox"][2]]
                          for a in anns if a["iscrowd"]]
        np.testing.assert_allclose(crowd, np.reshape(expected_crowd, (-1, 4)), atol=1e-4)
        kinds.update(["crowd"] if expected_crowd else [])
    assert image_ids == sorted(coco.getImgIds())
    assert kinds == {"polygon", "multi-polygon", "rle", "crowd"}
    with open(os.path.join(records.records_dir, "categories.json")) as f:
        assert json.load(f) == [{"id": c["id"], "name": c["name"]} for c in coco.loadCats(coco.getCatIds())]


def test_records_read_back_as_the_in_memory_reader_holds_them(root, records):
    memory = coco_data.read_coco(root, "train", in_memory=True, max_instances=4)
    back = coco_records.open_records(records.records_dir, max_instances=4).records
    assert len(back) == len(memory.records) == 20
    for a, b in zip(memory.records, back):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_shard_counts(records):
    assert len(records.shard_paths) == 5
    assert [len(c) for c in records.image_counts()] == [4] * 5
    assert records.num_images == 20


def _eval_batches(split, **kw):
    return list(coco_data.make_dataset(split, batch_size=3, training=False, short_side=120, long_side=1000, **kw))


@pytest.mark.parametrize("skip_empty", [False, True])
def test_eval_elements_equal_the_in_memory_pipeline(root, records, skip_empty):
    memory = coco_data.read_coco(root, "train", max_instances=3, skip_images_without_annotations=skip_empty,
                                 in_memory=True)
    from_records = coco_records.open_records(records.records_dir, max_instances=3,
                                             skip_images_without_annotations=skip_empty)
    expected, got = _eval_batches(memory), _eval_batches(from_records)
    assert len(got) == len(expected) == tf.data.experimental.cardinality(
        coco_data.make_dataset(from_records, batch_size=3, training=False)).numpy()
    for a, b in zip(expected, got):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert from_records.summary() == memory.summary()
    assert from_records.categories == memory.categories


def test_training_elements_equal_the_in_memory_pipeline_per_image_and_epoch(root, records):
    memory = coco_data.read_coco(root, "train", in_memory=True)
    kw = dict(batch_size=1, training=True, seed=7, short_side=96, long_side=1000)
    expected = {}
    for element in coco_data.make_dataset(memory, **kw).take(40):  # two epochs
        expected.setdefault(int(element["image_id"][0]), []).append(element)
    got = {}
    for element in coco_data.make_dataset(records, **kw).take(40):
        got.setdefault(int(element["image_id"][0]), []).append(element)
    assert sorted(got) == sorted(expected) and all(len(v) == 2 for v in got.values())
    flips = set()
    for image_id, elements in expected.items():
        for epoch, (a, b) in enumerate(zip(elements, got[image_id])):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key} of image {image_id}")
        flips.add(bool(np.array_equal(elements[0]["image"], elements[1]["image"])))
    assert flips == {True, False}  # some images flip in one epoch only: the flip depends on the epoch


def test_training_order_is_seeded(records):
    def ids(seed):
        dataset = coco_data.make_dataset(records, batch_size=1, training=True, seed=seed, short_side=32,
                                         long_side=64)
        return [int(e["image_id"][0]) for e in dataset.take(20)]

    first = ids(1)
    assert ids(1) == first and sorted(first) == sorted(ids(2)) and ids(2) != first


def test_training_order_does_not_depend_on_the_global_seed(records):
    # A global seed of 0 (keras.utils.set_random_seed(0)) once made a tensor-seeded Dataset.shuffle fail.
    def ids():
        dataset = coco_records.read_records(records, training=True, seed=1)
        return [int(e["image_id"]) for e in dataset.take(40)]  # two epochs

    orders = []
    try:
        for global_seed in (0, 5, None):
            tf.random.set_seed(global_seed)
            orders.append(ids())
    finally:
        tf.random.set_seed(None)
    assert orders[0] == orders[1] == orders[2]
    assert sorted(orders[0][:20]) == sorted(orders[0][20:]) and orders[0][:20] != orders[0][20:]


@pytest.mark.parametrize("shards", [5, 1])
def test_two_input_contexts_see_disjoint_complete_halves(root, tmp_path, records, shards):
    split = records
    if shards == 1:  # fewer shards than pipelines: every other example
        coco_convert.convert(*coco_data.split_paths(root, "train"), str(tmp_path), log=lambda line: None)
        split = coco_records.open_records(str(tmp_path))
    contexts = [tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i) for i in range(2)]
    halves = []
    for context in contexts:
        dataset = coco_data.make_dataset(split, batch_size=1, training=False, short_side=32, long_side=64,
                                         input_context=context)
        halves.append([int(e["image_id"][0]) for e in dataset])
        assert len(halves[-1]) == tf.data.experimental.cardinality(dataset).numpy()
    assert not set(halves[0]) & set(halves[1])
    every = [r["image_id"] for r in coco_data.read_coco(root, "train", in_memory=True).records]
    assert sorted(halves[0] + halves[1]) == every
    # Training: one epoch's worth from each pipeline is again a partition.
    epoch = []
    for context, half in zip(contexts, halves):
        dataset = coco_data.make_dataset(split, batch_size=1, training=True, seed=3, short_side=32, long_side=64,
                                         input_context=context)
        epoch += [int(e["image_id"][0]) for e in dataset.take(len(half))]
    assert sorted(epoch) == sorted(halves[0] + halves[1])


def test_a_partial_conversion_resumes_keeping_finished_shards(root, records, tmp_path):
    out = tmp_path / "records"
    shutil.copytree(records.records_dir, out)
    os.remove(out / "manifest.json")
    os.remove(out / "shard-00002-of-00005.tfrecord")  # killed while writing shard 2 ...
    (out / "shard-00002-of-00005.tfrecord.partial").write_bytes(b"half a shard")  # ... which left this
    kept = {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out) if name.endswith(".tfrecord")}
    lines = []
    coco_convert.convert(*coco_data.split_paths(root, "train"), str(out), images_per_shard=4, num_workers=1,
                         log=lines.append)
    assert "(4 already done)" in lines[0]
    assert {name: os.stat(out / name).st_mtime_ns for name in kept} == kept
    assert sorted(os.listdir(out)) == sorted(os.listdir(records.records_dir))
    for name in os.listdir(out):
        if name.endswith(".tfrecord"):
            assert _messages(out / name) == _messages(os.path.join(records.records_dir, name))


def test_a_records_folder_of_another_conversion_is_refused(root, records, tmp_path):
    out = tmp_path / "records"
    shutil.copytree(records.records_dir, out)
    os.remove(out / "manifest.json")  # an unfinished conversion with 4 images per shard
    with pytest.raises(coco_convert.RecordsMismatch, match="images_per_shard"):
        coco_convert.convert(*coco_data.split_paths(root, "train"), str(out), images_per_shard=8,
                             log=lambda line: None)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(coco_convert.RecordsMismatch, match="not empty"):
        coco_convert.convert(*coco_data.split_paths(root, "train"), str(tmp_path / "other"), log=lambda line: None)


def test_a_second_process_waits_for_the_one_converting(root, records, tmp_path):
    import fcntl
    import threading

    out = tmp_path / "records"
    out.mkdir()
    lines, result = [], {}
    with open(out / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is converting
        waiting = threading.Thread(target=lambda: result.update(manifest=coco_convert.convert(
            *coco_data.split_paths(root, "train"), str(out), images_per_shard=4, log=lines.append)))
        waiting.start()
        time.sleep(0.5)
        assert waiting.is_alive() and os.listdir(out) == ["lock"]
        for name in os.listdir(records.records_dir):  # ... and finishes
            shutil.copy(os.path.join(records.records_dir, name), out / name)
    waiting.join(30)
    assert lines == [f"{out} holds finished records already"]
    assert result["manifest"] == records.manifest


def test_open_coco_converts_on_first_use_then_opens(root, tmp_path, capsys):
    data = tmp_path / "coco"
    shutil.copytree(os.path.join(root, "annotations"), data / "annotations")
    os.symlink(os.path.join(root, "val2017"), data / "val2017")
    split = coco_records.open_coco(str(data), "val")
    assert "converting once" in capsys.readouterr().err
    assert os.path.isfile(data / "records" / "val2017_mask56" / "manifest.json")
    again = coco_records.open_coco(str(data), "val")
    assert "converting" not in capsys.readouterr().err
    assert again.summary() == split.summary() == coco_data.read_coco(str(data), "val", in_memory=True).summary()
    assert again.coco.getImgIds() == coco_data.read_coco(str(data), "val", in_memory=True).coco.getImgIds()
    path = data / "annotations" / "instances_val2017.json"
    document = json.loads(path.read_text())
    document["annotations"].pop()
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="has changed since the records"):
        coco_records.open_coco(str(data), "val")


def test_records_of_a_read_only_dataset_go_to_the_user_cache(tmp_path, monkeypatch):
    data = str(tmp_path / "coco")
    os.makedirs(data)
    assert coco_records.default_records_dir(data, "val", 56) == os.path.join(data, "records", "val2017_mask56")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a non-root user on a read-only mount
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cached = coco_records.default_records_dir(data, "val", 56)
    assert cached.startswith(str(tmp_path / "cache" / "keras-segmentation" / "coco"))
    assert cached.endswith("val2017_mask56")
    assert coco_records.default_records_dir(data + "2", "val", 56) != cached  # one folder per dataset


@pytest.mark.slow
def test_a_killed_conversion_resumes(root, records, tmp_path):
    """SIGKILL a real `python -m data.coco prepare` (2 worker processes) once shards appear; convert again."""
    out = tmp_path / "records" / "train2017_mask56"
    command = [sys.executable, "-m", "data.coco", "prepare", root, "--split", "train", "--out", str(out.parent),
               "--images-per-shard", "1", "--workers", "2"]
    process = subprocess.Popen(command, cwd=ROOT_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(out.glob("*.tfrecord")) and process.poll() is None:
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGKILL)  # the CLI and its workers
    finally:
        process.wait()
    assert list(out.glob("*.tfrecord")) and not (out / "manifest.json").exists(), "not caught mid-way"
    lines = []
    coco_convert.convert(*coco_data.split_paths(root, "train"), str(out), images_per_shard=1, num_workers=1,
                         log=lines.append)
    assert "already done)" in lines[0]
    # The same examples, in the same order, as an uninterrupted conversion (4 images per shard).
    resumed = [m for path in sorted(out.glob("*.tfrecord")) for m in _messages(path)]
    assert resumed == [m for path in records.shard_paths for m in _messages(path)]
    assert coco_records.open_records(str(out)).summary() == records.summary()

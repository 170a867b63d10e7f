"""train.py: short CPU runs of the real training path (tiny model, tiny images)."""
import csv
import json
import os
import random

import numpy as np
import pytest

import train
from models.pspnet import recipe
from models.training.recipe import parse_config
from cityscapes_fixtures import official_train_ids, write_split
from train_processes import kill_when, run_train, steps_done, two_worker_envs

TINY = ["--backbone", "resnet18", "--base-width", "8", "--crop", "32,32", "--scale-range", "0.75,1.25",
        "--batch-size", "2", "--steps-per-epoch", "2", "--keep-checkpoints", "1", "--verbose", "0"]


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cityscapes"))
    write_split(root, "train", num_images=4, seed=1)
    write_split(root, "val", num_images=2, seed=2)
    return root


def _config(root, out, *extra):
    return parse_config(recipe, ["--preset", "pspnet50_cityscapes_713", "--data", root, "--out", out]
                        + TINY + list(extra))


def test_a_few_steps_write_checkpoints_history_curves_and_config(cityscapes_root, tmp_path):
    out = str(tmp_path / "run")
    assert train.main(["--preset", "pspnet50_cityscapes_713", "--data", cityscapes_root, "--out", out,
                       "--epochs", "2"] + TINY) == 0
    files = set(os.listdir(out))
    assert {"config.json", "last.keras", "best.keras", "state.json", "history.csv", "curves.png"} <= files
    state = json.load(open(os.path.join(out, "state.json")))
    assert state["epochs_done"] == 2 and state["steps_done"] == 4
    assert state["best"] == pytest.approx(_val_miou(os.path.join(out, "best.keras"), cityscapes_root), abs=1e-5)
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["backbone"] == "resnet18" and config["crop"] == [32, 32] and config["lr"] == 0.01
    with pytest.raises(SystemExit, match="--resume"):  # never trains over an existing run
        train.main(["--preset", "pspnet50_cityscapes_713", "--data", cityscapes_root, "--out", out] + TINY)

    # TensorBoard: one scalar per epoch, the same numbers as history.csv.
    history = list(csv.DictReader(open(os.path.join(out, "history.csv"))))
    train_scalars = _tensorboard_scalars(os.path.join(out, "tensorboard", "train"))
    val_scalars = _tensorboard_scalars(os.path.join(out, "tensorboard", "validation"))
    np.testing.assert_allclose(train_scalars["epoch_loss"], [float(r["loss"]) for r in history], rtol=1e-5)
    np.testing.assert_allclose(val_scalars["epoch_main_miou"], [float(r["val_main_miou"]) for r in history], rtol=1e-5)
    assert state["best"] == pytest.approx(max(val_scalars["epoch_main_miou"]))


def _val_miou(checkpoint, root):
    """mIoU of a checkpoint on the val images, counted here: labels read with PIL, trainIds from
    cityscapesScripts' table, IoU per class over both images (classes absent from both left out)."""
    import keras
    from PIL import Image

    from data import cityscapes

    train_id = official_train_ids(19)
    model = keras.saving.load_model(checkpoint, safe_mode=True)
    gts, preds = [], []
    for element in cityscapes.eval_pipeline(cityscapes.read_folder(root, "val")):
        label_path = os.path.join(root, "gtFine", "val", "testcity",
                                  element["id"][0].numpy().decode() + "_gtFine_labelIds.png")
        gts.append(train_id[np.array(Image.open(label_path))].ravel())
        preds.append(np.argmax(model(element["image"], training=False)["main"][0], -1).ravel())
    gt, pred = np.concatenate(gts), np.concatenate(preds)
    keep = gt != 255
    ious = []
    for c in range(19):
        union = np.sum(((gt == c) | (pred == c)) & keep)
        if union:
            ious.append(np.sum((gt == c) & (pred == c) & keep) / union)
    return float(np.mean(ious))


def _tensorboard_scalars(folder):
    """{tag: [value per step]} from the event files in `folder` (read with TensorFlow's own reader)."""
    import tensorflow as tf

    scalars = {}
    files = sorted(tf.io.gfile.glob(os.path.join(folder, "events.out.tfevents.*")))
    assert files, f"no event files in {folder}"
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    return scalars


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--mixed-precision", "--jit-compile"])
def test_mixed_precision_and_jit_compile_train(cityscapes_root, tmp_path, flag):
    import keras

    out = str(tmp_path / "run")
    try:
        assert train.main(["--preset", "pspnet50_cityscapes_713", "--data", cityscapes_root, "--out", out,
                           "--epochs", "1", flag] + TINY) == 0
        policy = keras.mixed_precision.global_policy().name  # what the model was built under
    finally:
        keras.mixed_precision.set_global_policy("float32")  # the flag sets it for the process
    assert policy == ("mixed_bfloat16" if flag == "--mixed-precision" else "float32")  # a CPU: bfloat16
    history = list(csv.DictReader(open(os.path.join(out, "history.csv"))))
    assert len(history) == 1 and np.isfinite(float(history[0]["loss"])) and float(history[0]["loss"]) > 0
    keras.saving.load_model(os.path.join(out, "last.keras"), compile=False, safe_mode=True)  # loads
    assert json.load(open(os.path.join(out, "config.json")))[flag[2:].replace("-", "_")] is True


def test_mirrored_two_replicas_trains(cityscapes_root, tmp_path, two_replica_strategy):
    out = str(tmp_path / "mirrored")
    config = _config(cityscapes_root, out, "--epochs", "1", "--strategy", "mirrored")
    recipe.train_pspnet(config, strategy=two_replica_strategy)
    state = json.load(open(os.path.join(out, "state.json")))
    assert state["epochs_done"] == 1 and state["steps_done"] == 2
    import keras
    model = keras.saving.load_model(os.path.join(out, "last.keras"), compile=False, safe_mode=True)
    synced = [layer for layer in model.get_layer("backbone").layers if hasattr(layer, "synchronized")]
    assert synced and all(layer.synchronized for layer in synced)  # sync BN under a strategy


def test_steps_plan():
    config = recipe.PSPNetConfig(batch_size=16, epochs=200)
    assert recipe.steps_plan(config, 2975) == (185, 37000)
    config = recipe.PSPNetConfig(batch_size=8, steps=1000, steps_per_epoch=300)
    assert recipe.steps_plan(config, 2975) == (300, 1000)


def _final_weights(out):
    import keras

    return keras.saving.load_model(os.path.join(out, "last.keras"), compile=False, safe_mode=True).get_weights()


@pytest.mark.slow
def test_sigkill_at_random_moments_then_the_same_command_ends_as_an_uninterrupted_run(cityscapes_root, tmp_path):
    # Dropout on, a save every step, op determinism: the resumed run must match to the last bit.
    def command(out):
        return ["--preset", "pspnet50_cityscapes_713", "--data", cityscapes_root, "--out", out, "--epochs", "3",
                "--save-every", "1", "--deterministic", "--resume"] + TINY

    reference_out, out = str(tmp_path / "uninterrupted"), str(tmp_path / "killed")
    reference = run_train(command(reference_out))  # alongside: the runs take ~15 s each, mostly start-up
    delay = random.uniform(0.0, 1.0)  # a random moment after the first save: in a step, a save or validation
    kill_when([run_train(command(out))], out, at_least_steps=1, delay=delay)
    saved = steps_done(out)
    process = run_train(command(out))
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert f"(step {saved})" in output and 0 < saved < 6, (delay, saved, output)  # it resumed mid-way
    reference_output, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, reference_output
    assert steps_done(out) == steps_done(reference_out) == 6
    for got, want in zip(_final_weights(out), _final_weights(reference_out)):
        np.testing.assert_array_equal(got, want, err_msg=f"killed {delay:.2f} s after the first save")


@pytest.mark.slow
def test_two_process_multi_worker_run_killed_and_restarted_resumes_every_worker_at_the_chief_step(
        cityscapes_root, tmp_path):
    out = str(tmp_path / "multiworker")
    envs = two_worker_envs()

    def start_workers():
        procs = []
        for index, env in enumerate(envs):
            procs.append(run_train(["--preset", "pspnet50_cityscapes_713", "--data", cityscapes_root,
                                    "--out", out if index == 0 else str(tmp_path / "worker1"), "--epochs", "2",
                                    "--save-every", "1", "--strategy", "multiworker", "--resume"]
                                   + TINY[:-2] + ["--verbose", "1"], env=env))
        return procs

    kill_when(start_workers(), out, at_least_steps=2, delay=0.0)
    saved = steps_done(out)
    assert 2 <= saved < 4
    procs = start_workers()
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert f"worker chief: starting at step {saved}" in outputs[0], outputs[0]
    assert f"worker other: starting at step {saved}" in outputs[1], outputs[1]  # its own --out is empty
    state = json.load(open(os.path.join(out, "state.json")))
    assert state["epochs_done"] == 2 and state["steps_done"] == 4
    assert not os.path.exists(os.path.join(tmp_path / "worker1", "last.keras"))  # only the chief writes


def test_nan_loss_ends_with_a_clear_message(cityscapes_root, tmp_path):
    out = str(tmp_path / "nan")
    with pytest.raises(SystemExit, match="loss became nan at step 2 .*no checkpoint had been saved yet"):
        train.main(["--preset", "pspnet50_cityscapes_713", "--data", cityscapes_root, "--out", out,
                    "--epochs", "1", "--lr", "inf"] + TINY)  # step 1 makes every weight non-finite: step 2 fails
    assert not os.path.exists(os.path.join(out, "last.keras"))


def test_init_from_a_saved_pspnet_starts_from_its_weights(cityscapes_root, tmp_path):
    """train.py --init-from FILE.keras (what models.convert writes): the run starts from that file's weights,
    with the file's own architecture (here another stem than the flags ask for)."""
    import keras

    from models import build_pspnet

    keras.utils.set_random_seed(3)
    source = build_pspnet(19, backbone="resnet18", base_width=8, stem="standard", aux=True)
    source_path = str(tmp_path / "source.keras")
    source.save(source_path)
    out = str(tmp_path / "run")
    # lr 0 and no weight decay: the steps leave every trainable weight as it started (BatchNorm's moving
    # statistics do move), so the checkpoint shows where the run started.
    assert train.main(["--preset", "pspnet50_cityscapes_713", "--data", cityscapes_root, "--out", out,
                       "--epochs", "1", "--init-from", source_path, "--lr", "0", "--weight-decay", "0",
                       "--stem", "deep"] + TINY) == 0
    trained = keras.saving.load_model(os.path.join(out, "last.keras"), safe_mode=True)
    assert trained.get_config()["stem"] == "standard"
    start = {w.path: w.numpy() for w in source.trainable_weights}
    assert len(start) == len(trained.trainable_weights) > 50
    for weight in trained.trainable_weights:
        np.testing.assert_array_equal(weight.numpy(), start[weight.path], err_msg=weight.path)
    with pytest.raises(SystemExit, match="--init-from .*missing.keras: no such file"):
        train.main(["--preset", "pspnet50_cityscapes_713", "--data", cityscapes_root, "--out", str(tmp_path / "x"),
                    "--init-from", str(tmp_path / "missing.keras")] + TINY)


def test_a_truncated_training_image_stops_with_its_name_or_is_skipped(tmp_path):
    root = str(tmp_path / "cityscapes")
    write_split(root, "train", num_images=3, seed=1)
    write_split(root, "val", num_images=1, seed=2)
    bad = os.path.join(root, "leftImg8bit", "train", "testcity", "testcity_000001_000019_leftImg8bit.png")
    with open(bad, "rb") as f:
        data = f.read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])  # a download cut short
    args = ["--preset", "pspnet50_cityscapes_713", "--data", root, "--epochs", "1"] + TINY
    with pytest.raises(SystemExit, match="testcity_000001_000019_leftImg8bit.png"):
        train.main(args + ["--out", str(tmp_path / "stopped")])
    assert train.main(args + ["--out", str(tmp_path / "skipped"), "--skip-bad"]) == 0
    state = json.load(open(os.path.join(tmp_path, "skipped", "state.json")))
    assert state["steps_done"] == 2  # --steps-per-epoch 2 of the two good images

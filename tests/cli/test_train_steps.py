"""train.py --steps N ends at optimizer step N, fresh or resumed, in both recipes; --resume compares the flags
with the run's config.json: what may change is honoured and said, what would make another model is refused.

Steps are counted with optimizer.iterations in the saved state (read with h5py), not from the log.
"""
import csv
import json
import os
import signal

import pytest

import train
from cityscapes_fixtures import write_split
from data.samples.coco import write_coco_sample
from steps_checks import saved_iterations, saved_learning_rate_config, stop_at_step

PSPNET = ["--preset", "pspnet50_cityscapes_713", "--backbone", "resnet18", "--base-width", "8", "--crop", "32,32",
          "--scale-range", "0.75,1.25", "--batch-size", "2", "--steps-per-epoch", "2", "--keep-checkpoints", "1",
          "--val-images", "1", "--verbose", "0"]
DETECTOR = ["--model", "mask_rcnn", "--preset", "maskrcnn_r50_fpn_1x_coco", "--stage", "heads", "--base-width", "8",
            "--fpn-channels", "16", "--mask-head-channels", "8", "--box-head-units", "32", "--rpn-pre-nms-top-n",
            "200", "--rpn-post-nms-top-n", "100", "--box-batch-size", "32", "--short-side", "96", "--long-side",
            "128", "--batch-size", "2", "--steps-per-epoch", "2", "--milestones", "3", "--warmup-steps", "1",
            "--lr", "0.002", "--clip-norm", "5",  # a randomly initialised tiny detector diverged at step 5 at 0.02
            "--verbose", "0"]


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cityscapes"))
    write_split(root, "train", num_images=4, seed=1)
    write_split(root, "val", num_images=1, seed=2)
    return root


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("coco"))
    write_coco_sample(path, num_train=4, num_val=2, size=(96, 128), seed=0)
    return path


def _epochs_logged(out):
    with open(os.path.join(out, "history.csv")) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def _state(out):
    with open(os.path.join(out, "state.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("steps, per_epoch, epochs", [
    (1, 2, [0]), (2, 2, [0]), (3, 2, [0, 1]),  # below, at, above --steps-per-epoch
    (3, 1000, [0]),  # the run: 3 steps, not 1000
])
def test_pspnet_fresh_run_ends_at_exactly_steps(cityscapes_root, tmp_path, steps, per_epoch, epochs):
    out = str(tmp_path / "run")
    assert train.main(["--data", cityscapes_root, "--out", out, "--steps", str(steps)] + PSPNET
                      + ["--steps-per-epoch", str(per_epoch)]) == 0
    assert saved_iterations(out) == steps
    assert _epochs_logged(out) == epochs  # the last epoch shortened, validated and saved like the others
    assert _state(out)["epochs_done"] == len(epochs)


def test_pspnet_resume_stopped_run_with_a_smaller_then_a_larger_steps(cityscapes_root, tmp_path, monkeypatch,
                                                                     capsys):
    out = str(tmp_path / "run")
    command = ["--data", cityscapes_root, "--out", out] + PSPNET
    stop_at_step(monkeypatch, 1)
    with pytest.raises(SystemExit) as stopped:
        train.main(command + ["--steps", "6"])
    assert stopped.value.code == 128 + signal.SIGTERM and saved_iterations(out) == 1
    monkeypatch.undo()

    capsys.readouterr()
    assert train.main(["--data", cityscapes_root, "--out", out, "--resume", "--steps", "3"]) == 0  # the rest: saved
    assert saved_iterations(out) == 3
    said = capsys.readouterr().out
    assert ("--resume: --steps 3 (saved: 6); the learning-rate schedule is recomputed for 3 steps from step 1 on"
            in said)
    assert saved_learning_rate_config(out)["decay_steps"] == 3  # poly: lr x (1 - step / 3) ** 0.9 from step 1 on
    assert _state(out)["epochs_done"] == 2

    assert train.main(command + ["--resume", "--steps", "5", "--keep-checkpoints", "2"]) == 0
    assert saved_iterations(out) == 5 and _state(out)["epochs_done"] == 3
    said = capsys.readouterr().out
    assert "--resume: --steps 5 (saved: 3); the learning-rate schedule is recomputed for 5 steps from step 3 on" in said
    assert "--resume: --keep-checkpoints 2 (saved: 1)\n" in said
    assert json.load(open(os.path.join(out, "config.json")))["keep_checkpoints"] == 2


def test_pspnet_resume_at_or_past_steps_ends_at_once_and_writes_nothing(cityscapes_root, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.main(["--data", cityscapes_root, "--out", out, "--steps", "2"] + PSPNET) == 0
    before = {name: open(os.path.join(out, name), "rb").read() for name in ("config.json", "state.json", "history.csv")}
    for data, steps in ((["--data", cityscapes_root], "2"), ([], "1")):  # --data, like the rest: the saved one
        capsys.readouterr()
        assert train.main(data + ["--out", out, "--resume", "--steps", steps]) == 0
        said = capsys.readouterr().out
        assert f"the run is at step 2 already, at or past --steps {steps}; nothing to train" in said
    assert {name: open(os.path.join(out, name), "rb").read() for name in before} == before
    assert saved_iterations(out) == 2


@pytest.mark.parametrize("flags, message", [
    (["--backbone", "resnet34"], "--backbone resnet34: the run in {out} was trained with --backbone resnet18"),
    (["--crop", "48"], "--crop 48,48: the run in {out} was trained with --crop 32,32"),
    (["--batch-size", "4"], "--batch-size 4: the run in {out} was trained with --batch-size 2"),
    (["--preset", "pspnet101_cityscapes_713"],
     "--preset pspnet101_cityscapes_713: the run in {out} was trained with --preset pspnet50_cityscapes_713"),
])
def test_pspnet_resume_refuses_a_change_that_makes_another_model(cityscapes_root, tmp_path, flags, message):
    out = str(tmp_path / "run")
    assert train.main(["--data", cityscapes_root, "--out", out, "--steps", "1"] + PSPNET) == 0
    before = open(os.path.join(out, "config.json")).read()
    with pytest.raises(SystemExit, match="^" + message.format(out=out).replace("(", r"\(")) as refused:
        train.main(["--data", cityscapes_root, "--out", out, "--resume", "--steps", "2"] + flags)
    assert len(str(refused.value.code).splitlines()) == 1
    assert open(os.path.join(out, "config.json")).read() == before and saved_iterations(out) == 1


@pytest.mark.slow
@pytest.mark.parametrize("steps", [1, 2, 3])  # below, at, above --steps-per-epoch 2
def test_detector_fresh_run_ends_at_exactly_steps(coco_root, tmp_path, steps):
    out = str(tmp_path / "run")
    assert train.main(["--data", coco_root, "--out", out, "--steps", str(steps)] + DETECTOR) == 0
    assert saved_iterations(out) == steps and _state(out)["epochs_done"] == (steps + 1) // 2


@pytest.mark.slow
def test_detector_resume_stopped_run_with_a_smaller_then_a_larger_steps(coco_root, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    command = ["--data", coco_root, "--out", out] + DETECTOR
    stop_at_step(monkeypatch, 1)
    with pytest.raises(SystemExit) as stopped:
        train.main(command + ["--steps", "50000"])  # the run: 50000 steps, stopped after step 1
    assert stopped.value.code == 128 + signal.SIGTERM and saved_iterations(out) == 1
    monkeypatch.undo()

    capsys.readouterr()
    assert train.main(command + ["--resume", "--steps", "2"]) == 0
    assert saved_iterations(out) == 2
    assert "--resume: --steps 2 (saved: 50000); the learning-rate schedule is recomputed" in capsys.readouterr().out
    assert train.main(["--model", "mask_rcnn", "--data", coco_root, "--out", out, "--resume", "--steps", "5"]) == 0
    assert saved_iterations(out) == 5 and _state(out)["epochs_done"] == 3
    with pytest.raises(SystemExit, match="^--fpn-channels 32: the run in .* was trained with --fpn-channels 16"):
        train.main(command + ["--resume", "--steps", "6", "--fpn-channels", "32"])
    assert saved_iterations(out) == 5

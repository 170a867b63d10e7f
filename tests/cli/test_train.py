"""train.py: short CPU runs of the real training path (tiny model, tiny images)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import train
from models.pspnet import recipe
from models.recipes import parse_config
from cityscapes_fixtures import write_split

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
    assert state["epochs_done"] == 2 and state["steps_done"] == 4 and 0.0 <= state["best"] <= 1.0
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["backbone"] == "resnet18" and config["crop"] == [32, 32] and config["lr"] == 0.01
    with pytest.raises(SystemExit, match="--resume"):  # never trains over an existing run
        train.main(["--preset", "pspnet50_cityscapes_713", "--data", cityscapes_root, "--out", out] + TINY)


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
    assert recipe.steps_plan(config, 2975) == (200, 185, 37000)
    config = recipe.PSPNetConfig(batch_size=8, steps=1000, steps_per_epoch=300)
    assert recipe.steps_plan(config, 2975) == (4, 300, 1000)


def _run_train(args, env=None):
    return subprocess.Popen([sys.executable, "train.py"] + args, cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint(cityscapes_root, tmp_path):
    out = str(tmp_path / "killed")
    args = ["--preset", "pspnet50_cityscapes_713", "--data", cityscapes_root, "--out", out, "--epochs", "4"] + TINY
    first = _run_train(args)
    state_file = os.path.join(out, "state.json")
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        if os.path.exists(state_file) and json.load(open(state_file))["epochs_done"] >= 1:
            break
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    state = json.load(open(state_file))
    done = state["epochs_done"]
    assert 1 <= done < 4, "the run should have been killed mid-way"
    assert state["steps_done"] == 2 * done

    second = _run_train(args + ["--resume"])
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    assert f"starting at epoch {done + 1}" in output
    final = json.load(open(state_file))
    assert final["epochs_done"] == 4 and final["steps_done"] == 8  # no step repeated or lost after the save


@pytest.mark.slow
def test_two_process_multi_worker_run(cityscapes_root, tmp_path):
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    out = str(tmp_path / "multiworker")
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(_run_train(["--preset", "pspnet50_cityscapes_713", "--data", cityscapes_root,
                                 "--out", out if index == 0 else str(tmp_path / "worker1"),
                                 "--epochs", "1", "--strategy", "multiworker"] + TINY, env=env))
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    state = json.load(open(os.path.join(out, "state.json")))
    assert state["epochs_done"] == 1 and state["steps_done"] == 2
    assert os.path.exists(os.path.join(out, "last.keras"))
    assert not os.path.exists(os.path.join(tmp_path / "worker1", "last.keras"))  # only the chief writes


def test_nan_loss_ends_with_a_clear_message(cityscapes_root, tmp_path):
    out = str(tmp_path / "nan")
    with pytest.raises(SystemExit, match="loss became nan at step 1 .*no checkpoint had been saved yet"):
        train.main(["--preset", "pspnet50_cityscapes_713", "--data", cityscapes_root, "--out", out,
                    "--epochs", "1", "--lr", "inf"] + TINY)  # the first step makes every weight non-finite
    assert not os.path.exists(os.path.join(out, "last.keras"))

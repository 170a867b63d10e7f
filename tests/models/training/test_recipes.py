"""Command-line checks of the training recipes: one line naming the flag, before anything is built."""
import os
import re
import subprocess
import sys

import pytest

from data.cli import UsageError

from models.mask_rcnn import recipe as mask_recipe
from models.pspnet import recipe as pspnet_recipe
from models.training.recipe import check_batch_split, parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _checked(recipe, tmp_path, *flags):
    config = parse_config(recipe, ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")] + list(flags))
    recipe.check_config(config)
    return config


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size must be positive, got 0"),
    (["--batch-size", "-4"], "--batch-size must be positive, got -4"),
    (["--crop", "0"], "--crop must be positive, got 0"),
    (["--crop", "713,-1"], "--crop must be positive, got -1"),
    (["--epochs", "0"], "--epochs must be positive, got 0"),
    (["--steps", "-1"], "--steps must be 0 or more, got -1"),
    (["--steps-per-epoch", "-5"], "--steps-per-epoch must be 0 or more, got -5"),
    (["--save-every", "-1"], "--save-every must be 0 or more, got -1"),
    (["--backbone", "resnet7"], "--backbone 'resnet7' is not one of resnet101, resnet152, resnet18"),
    (["--stem", "wide"], "--stem 'wide' is not one of deep, standard"),
    (["--output-stride", "4"], "--output-stride 4 is not one of 8, 16, 32"),
])
def test_pspnet_flags_no_run_can_use_are_named(tmp_path, flags, message):
    with pytest.raises(UsageError, match="^" + re.escape(message)):
        _checked(pspnet_recipe, tmp_path, *flags)


@pytest.mark.parametrize("flags, message", [
    (["--stage", "full"], "--stage 'full' is not one of heads, mask_head, all"),
    (["--backbone", "resnet7"], "--backbone 'resnet7' is not one of resnet50, resnet101"),
    (["--box-batch-size", "0"], "--box-batch-size must be positive, got 0"),
    (["--trainable-backbone-stages", "6"], "--trainable-backbone-stages 6: at most 5"),
    (["--steps", "0"], "--steps must be positive, got 0"),
    (["--short-side", "-1"], "--short-side must be positive, got -1"),
])
def test_mask_rcnn_flags_no_run_can_use_are_named(tmp_path, flags, message):
    with pytest.raises((UsageError, SystemExit), match="^" + re.escape(message)):
        _checked(mask_recipe, tmp_path, "--model", "mask_rcnn", *flags)


def test_good_flags_pass(tmp_path):
    assert _checked(pspnet_recipe, tmp_path, "--backbone", "resnet50", "--crop", "512").crop == (512, 512)
    assert _checked(mask_recipe, tmp_path, "--model", "mask_rcnn", "--stage", "heads").stage == "heads"


@pytest.mark.parametrize("recipe", [pspnet_recipe, mask_recipe])
def test_an_output_folder_inside_the_dataset_is_refused(tmp_path, recipe):
    data = tmp_path / "data"
    for out in (data, data / "runs" / "a"):
        config = parse_config(recipe, ["--data", str(data), "--out", str(out)])
        with pytest.raises(UsageError, match=re.escape(f"--out {out}: inside the dataset folder --data {data}")):
            recipe.check_config(config)
    config = parse_config(recipe, ["--data", str(data), "--out", str(tmp_path / "data_runs")])  # a sibling is fine
    recipe.check_config(config)


@pytest.mark.parametrize("flags, flag", [(["--preset", "nope"], "--preset"), (["--model", "unet"], "--model")])
def test_unknown_preset_or_model_is_named(tmp_path, capsys, flags, flag):
    with pytest.raises(SystemExit) as error:
        parse_config(pspnet_recipe, ["--data", str(tmp_path)] + flags)
    assert error.value.code == 2 and f"argument {flag}: invalid choice" in capsys.readouterr().err


def test_a_batch_that_does_not_split_over_the_replicas(tmp_path, two_replica_strategy):
    config = _checked(pspnet_recipe, tmp_path, "--batch-size", "3")
    with pytest.raises(UsageError, match="^--batch-size 3 does not split evenly over 2 replicas; pass a multiple of 2"):
        check_batch_split(config, 2)
    check_batch_split(config, 1)
    with pytest.raises(UsageError, match="^--batch-size 3 does not split evenly over 2 replicas"):
        pspnet_recipe.train_pspnet(config, strategy=two_replica_strategy)  # the real run checks it
    assert not os.path.exists(config.out)  # before the run folder is made


@pytest.mark.slow
def test_the_command_line_says_one_line_and_a_traceback_only_with_debug(tmp_path):
    command = [sys.executable, "train.py", "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--batch-size", "0"]
    quiet = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert quiet.returncode != 0 and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().splitlines()[-1] == "--batch-size must be positive, got 0"
    loud = subprocess.run(command + ["--debug"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "check_positive" in loud.stderr

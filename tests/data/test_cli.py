"""data.cli: each check names its flag in one line; user_errors turns user errors (only) into SystemExit."""
import math
import os
import platform

import pytest

from data import cli
from data.cli import UsageError
from data.images import BadImageError


@pytest.mark.parametrize("check, args, message", [
    (cli.check_positive, ("--batch-size", 0), "--batch-size must be positive, got 0"),
    (cli.check_positive, ("--steps", -5), "--steps must be positive, got -5"),
    (cli.check_non_negative, ("--max-images", -1), "--max-images must be 0 or more, got -1"),
    (cli.check_fraction, ("--alpha", 1.01), "--alpha must lie in [0, 1], got 1.01"),
    (cli.check_fraction, ("--alpha", math.nan), "--alpha must lie in [0, 1], got nan"),
    (cli.parse_scales, ("--scales", "1,nan"), "--scales factors must be positive, got '1,nan'"),
    (cli.parse_scales, ("--scales", ""), "--scales takes positive numbers"),
    (cli.check_divisible, ("--batch-size", 6, 4, "replicas"),
     "--batch-size 6 does not split evenly over 4 replicas; pass a multiple of 4"),
    (cli.check_choice, ("--backbone", "resnet7", ("resnet18", "resnet50")),
     "--backbone 'resnet7' is not one of resnet18, resnet50"),
])
def test_each_check_names_its_flag(check, args, message):
    with pytest.raises(UsageError) as error:
        check(*args)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_values_that_pass_come_back():
    assert cli.check_positive("--crop", 713) == 713
    assert cli.check_non_negative("--max-images", 0) == 0
    assert cli.check_fraction("--alpha", 1.0) == 1.0
    assert cli.parse_scales("--scales", "0.5,1,1.75") == (0.5, 1.0, 1.75)
    assert cli.check_divisible("--batch-size", 16, 8, "replicas") == 2
    assert cli.check_choice("--backbone", "resnet50", ("resnet18", "resnet50")) == "resnet50"


def test_output_inside_the_data_folder_through_any_path(tmp_path):
    data = tmp_path / "cityscapes"
    (data / "gtFine").mkdir(parents=True)
    os.symlink(data / "gtFine", tmp_path / "link")
    for out in (data, data / "eval", tmp_path / "link" / "eval", tmp_path / "x" / ".." / "cityscapes" / "e"):
        with pytest.raises(UsageError, match=f"--out {out}: inside the dataset folder --data {data}"):
            cli.check_output_outside("--out", str(out), "--data", str(data))
    # a sibling whose name starts the same is outside
    assert cli.check_output_outside("--out", str(tmp_path / "cityscapes_eval"), "--data", str(data))
    with pytest.raises(UsageError):
        cli.check_output_outside("--out", "gs://bucket/data/out", "--data", "gs://bucket/data/")


def test_user_errors_become_one_line_exits_and_programming_errors_do_not():
    for error in (UsageError("--crop must be positive, got 0"), BadImageError("a.png: empty file (0 bytes)")):
        with pytest.raises(SystemExit) as exit_:
            with cli.user_errors():
                raise error
        assert str(exit_.value) == str(error)
    with pytest.raises(SystemExit, match="^missing.json: no such file or folder$"):
        with cli.user_errors():
            open("missing.json")
    with pytest.raises(KeyError):  # a bug keeps its traceback
        with cli.user_errors():
            {}["x"]
    with pytest.raises(UsageError):  # --debug: the exception itself
        with cli.user_errors(debug=True):
            raise UsageError("--crop must be positive, got 0")


@pytest.mark.parametrize("cpu_flags, preset, expected", [
    ({"avx2", "avx512f", "avx512_vnni"}, None, "1"),
    ({"avx2", "avx512f"}, None, "1"),  # AVX-512 without VNNI: TensorFlow leaves it off, we turn it on
    ({"avx2", "fma"}, None, None),  # AVX2 only: TensorFlow's own default (off)
    (set(), None, None),  # flags unknown (no /proc/cpuinfo): TensorFlow's own default
    ({"avx2", "avx512f"}, "0", "0"),  # the user's setting wins either way
    ({"avx2"}, "1", "1"),
])
def test_onednn_default_follows_the_cpu_and_yields_to_the_user(cpu_flags, preset, expected):
    environ = {} if preset is None else {"TF_ENABLE_ONEDNN_OPTS": preset}
    cli.set_tensorflow_environment(environ, cpu_flags)
    assert environ.get("TF_ENABLE_ONEDNN_OPTS") == expected
    assert environ["TF_CPP_MIN_LOG_LEVEL"] == "2"


def test_tensorflow_environment_keeps_the_users_log_level():
    environ = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    cli.set_tensorflow_environment(environ, set())
    assert environ == {"TF_CPP_MIN_LOG_LEVEL": "0"}


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                    reason="the flags are read from /proc/cpuinfo's 'flags' lines, which x86-64 Linux writes")
def test_cpu_flags_and_fields_are_read_from_this_machine():
    assert {"fpu", "sse2"} <= cli.cpu_feature_flags()  # every x86-64 CPU has them
    assert cli.cpuinfo_field("model name")  # x86-64 Linux names the model
    assert cli.cpuinfo_field("no such field") is None

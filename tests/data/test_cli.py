"""data.cli: each check names its flag in one line; user_errors turns user errors (only) into SystemExit;
flags of another --model are refused; output paths are checked before anything is written."""
import argparse
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
    from data.coco.annotations import CocoInputError
    from data.coco.convert import RecordsMismatch
    from data.errors import OutputExistsError
    from models.convert.torch_reader import CheckpointMismatch
    from models.keras_files import CheckpointError

    # Every module's user errors are UserError subclasses: caught by that one class, nothing imported to list them.
    for error in (UsageError("--crop must be positive, got 0"), BadImageError("a.png: empty file (0 bytes)"),
                  CheckpointError("--checkpoint c.keras: not a .keras file"), CocoInputError("a.json: not valid JSON"),
                  RecordsMismatch("records/: written from b.json"), CheckpointMismatch("m.pth: missing keys [x]"),
                  OutputExistsError("out/leftImg8bit: exists already")):
        with pytest.raises(SystemExit) as exit_:
            with cli.user_errors():
                raise error
        assert exit_.value.code == str(error)
    with pytest.raises(SystemExit) as exit_:
        with cli.user_errors():
            raise UsageError("first line\nsecond line")
    assert exit_.value.code == "first line"
    with pytest.raises(SystemExit, match="^missing.json: no such file or folder$"):
        with cli.user_errors():
            open("missing.json")
    with pytest.raises(SystemExit, match="^/root/x: permission denied$"):  # an OSError naming its path
        with cli.user_errors():
            raise PermissionError(13, "Permission denied", "/root/x")
    with pytest.raises(OSError):  # an OSError naming no path is no message for a user: it keeps its traceback
        with cli.user_errors():
            raise OSError("device busy")
    with pytest.raises(KeyError):  # a bug keeps its traceback
        with cli.user_errors():
            {}["x"]
    with pytest.raises(UsageError):  # --debug: the exception itself
        with cli.user_errors(debug=True):
            raise UsageError("--crop must be positive, got 0")


@pytest.mark.parametrize("text, pair", [("713", (713, 713)), ("512,1024", (512, 1024)), ("512x1024", (512, 1024)),
                                        ("512X1024", (512, 1024)), (" 5 , 7 ", (5, 7))])
def test_a_size_is_one_number_or_h_w(text, pair):
    assert cli.parse_pair(text) == pair


@pytest.mark.parametrize("text", ["big", "", "1,2,3", "3x", "1.5"])
def test_a_size_that_is_not_one_or_two_numbers(text):
    message = f"takes one number or two like 713 or 512,1024 (H,W), got {text!r}"
    with pytest.raises(argparse.ArgumentTypeError) as error:
        cli.parse_pair(text)
    assert str(error.value) == message
    with pytest.raises(UsageError) as error:
        cli.parse_pair(text, flag="--crop")
    assert str(error.value) == "--crop " + message


def _parser():
    parser = cli.ArgumentParser(prog="tool")
    parser.add_argument("--model", choices=["pspnet", "mask_rcnn"], default="pspnet", help="family")
    parser.add_argument("--sliding", action="store_true", models=("pspnet",), help="windows")
    parser.add_argument("--scales", default="1", models=("pspnet",), help="factors")
    parser.add_argument("--short-side", type=int, default=None, models=("mask_rcnn",), help="resize")
    parser.add_argument("--alpha", type=float, default=0.5, help="opacity")
    return parser


@pytest.mark.parametrize("argv, given", [
    ([], []),
    (["--alpha", "0.5"], ["--alpha"]),  # the default value, but given
    (["--slid", "--scales=1", "--model", "pspnet"], ["--model", "--sliding", "--scales"]),  # abbreviated, =value
])
def test_given_flags_are_what_the_command_line_says_not_the_defaults(argv, given):
    assert cli.given_flags(_parser(), argv) == given


@pytest.mark.parametrize("argv, flag, model, owner", [
    (["--model", "mask_rcnn", "--sliding"], "--sliding", "mask_rcnn", "pspnet"),
    (["--model", "mask_rcnn", "--scales", "1"], "--scales", "mask_rcnn", "pspnet"),  # the default value, given
    (["--model=mask_rcnn", "--sca=2"], "--scales", "mask_rcnn", "pspnet"),
    (["--short-side", "600"], "--short-side", "pspnet", "mask_rcnn"),  # --model left at its default
])
def test_a_flag_of_the_other_model_is_refused_in_one_line(capsys, argv, flag, model, owner):
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (f"tool: error: argument {flag}: not used by --model {model}, only by "
                                       f"--model {owner}; leave it out (see --help)\n")


def test_flags_of_the_model_and_defaults_pass_and_help_says_which_model():
    parser = _parser()
    args = parser.parse_args(["--model", "mask_rcnn", "--short-side", "600", "--alpha", "0.3"])
    assert (args.short_side, args.scales, args.sliding) == (600, "1", False)
    assert parser.parse_args(["--sliding"]).sliding
    assert "windows [--model pspnet only]" in " ".join(parser.format_help().split())


def test_output_paths_a_file_is_in_the_way(tmp_path):
    (tmp_path / "file").write_text("mine")
    (tmp_path / "folder").mkdir()
    problems = [
        (cli.check_output_dir, "--out", tmp_path / "file", "is a file, not a folder; pass another --out"),
        (cli.check_output_dir, "--out", tmp_path / "file" / "a" / "b",
         f"lies under the file {tmp_path / 'file'}, not a folder; pass another --out"),
        (cli.check_output_file, "--json", tmp_path / "folder", "is a folder; give a file name"),
        (cli.check_output_file, "OUT", tmp_path / "file" / "m.keras",
         f"lies under the file {tmp_path / 'file'}, not a folder; pass another OUT"),
    ]
    for check, flag, path, why in problems:
        with pytest.raises(UsageError) as error:
            check(flag, str(path))
        assert str(error.value) == f"{flag} {path}: {why}"
    assert sorted(os.listdir(tmp_path)) == ["file", "folder"] and (tmp_path / "file").read_text() == "mine"


def test_output_paths_that_can_be_made_pass_and_nothing_is_created(tmp_path):
    assert cli.check_output_dir("--out", str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")
    assert cli.check_output_file("--json", str(tmp_path / "a" / "r.json")) == str(tmp_path / "a" / "r.json")
    assert cli.check_output_dir("--out", str(tmp_path)) == str(tmp_path)
    assert cli.check_output_dir("--out", "gs://bucket/run") == "gs://bucket/run"  # remote: left to the writer
    assert os.listdir(tmp_path) == []


def test_output_paths_without_permission(tmp_path, monkeypatch):
    # As a user without write permission there (the tests may run as root, whom os.access always lets write).
    (tmp_path / "r.json").write_text("{}")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(UsageError) as error:
        cli.check_output_dir("--out", str(tmp_path / "run"))
    assert str(error.value) == f"--out {tmp_path / 'run'}: no permission to write in {tmp_path}; pass another --out"
    with pytest.raises(UsageError) as error:
        cli.check_output_file("--json", str(tmp_path / "r.json"))
    assert str(error.value) == (f"--json {tmp_path / 'r.json'}: no permission to write in {tmp_path}; "
                                "pass another --json")
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(tmp_path / "r.json"))  # the file only
    with pytest.raises(UsageError) as error:
        cli.check_output_file("--json", str(tmp_path / "r.json"))
    assert str(error.value) == f"--json {tmp_path / 'r.json'}: no permission to write it; pass another --json"


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

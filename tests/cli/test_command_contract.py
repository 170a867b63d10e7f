"""One contract for every command (train.py, evaluate.py, predict.py, python -m models.convert / data.coco /
data.samples / benchmarks), all built on data.cli:

- --debug on every command, a help text on every flag;
- a user error is one line on stderr and exit status 1 (a parse error: exit 2), the traceback only with --debug;
- a flag of the other --model is refused, naming it;
- --crop takes 713 or H,W wherever it is a flag;
- an output path that cannot be written is one line naming it, before anything is read or written;
- library code raises data.errors.UserError subclasses, never SystemExit.

In-process calls check each message exactly (SystemExit carries it: a str code is printed and exits 1);
real subprocesses check what a user sees. The commands refuse before they import TensorFlow where
they can (evaluate.py, predict.py, data.samples, benchmarks: a fraction of a second each); the others
(train.py, models.convert, data.coco) import it with their package, so they are one grouped slow test.
"""
import argparse
import ast
import importlib
import os
import re
import subprocess
import sys

import pytest

import evaluate
import predict
import train
from data.coco import command as coco_command
from data.errors import UsageError
from data.samples import command as samples_command
from models.convert import command as convert_command
from models.export import command as export_command
from models.mask_rcnn import recipe as mask_recipe
from models.pspnet import recipe as pspnet_recipe
from models.training.recipe import build_parser as recipe_parser, parse_config

benchmarks_command = importlib.import_module("benchmarks.__main__")

ROOT = __file__.rsplit("/tests/", 1)[0]
# TensorFlow's C++ runtime may log a few lines at start-up whatever TF_CPP_MIN_LOG_LEVEL says: not the command's.
_TF_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl|To enable the following instructions)")


def _run(*argv):
    """(exit status, stderr lines without TensorFlow's start-up log) of a real command line, run from the repo."""
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return done.returncode, [line for line in done.stderr.splitlines() if line.strip() and not _TF_LOG.match(line)]


def _parsers():
    """Every command's parser(s), by name."""
    top, prepare = coco_command.build_parser()
    return {"evaluate.py": evaluate.build_parser(), "predict.py": predict.build_parser(),
            "models.convert": convert_command.build_parser(), "models.export": export_command.build_parser(),
            "data.coco": top, "data.coco prepare": prepare,
            "data.samples": samples_command.build_parser(), "benchmarks": benchmarks_command.build_parser(),
            "train.py pspnet": recipe_parser(pspnet_recipe.CONFIG, pspnet_recipe.PRESETS),
            "train.py mask_rcnn": recipe_parser(mask_recipe.CONFIG, mask_recipe.PRESETS)}


@pytest.mark.parametrize("name", sorted(_parsers()))
def test_every_command_has_debug_and_the_shared_parser(name):
    parser = _parsers()[name]
    assert type(parser).__module__ == "data.cli"  # one-line parse errors, model-only flags
    if name != "data.coco":  # the top level only picks the command; prepare has --debug
        assert "--debug" in parser._option_string_actions


@pytest.mark.parametrize("name", [n for n in sorted(_parsers()) if not n.startswith("train.py")])
def test_every_flag_has_a_help_text(name):
    # (train.py's flags come from the recipes' config fields: models/training/recipe.py documents them.)
    missing = [action.option_strings or action.dest for action in _parsers()[name]._actions
               if not isinstance(action, argparse._HelpAction) and not action.help]
    assert not missing, f"{name}: no help for {missing}"


# What the issue lists: the flags one model family uses (evaluate.py and predict.py), the others' are refused.
PROTOCOL_FLAGS = {"--protocol": "pspnet", "--stride": "pspnet", "--base-size": "pspnet", "--test-scale": "pspnet"}
MODEL_ONLY = {
    "evaluate.py": {"--tfds": "pspnet", "--sliding": "pspnet", "--crop": "pspnet", "--flip": "pspnet",
                    "--scales": "pspnet", "--skip-bad": "pspnet", "--boxes": "mask_rcnn",
                    "--class-source": "mask_rcnn", "--short-side": "mask_rcnn", "--long-side": "mask_rcnn",
                    **PROTOCOL_FLAGS,
                    # issue 23: how detections become COCO results (torchvision's rules for converted models)
                    "--mask-rule": "mask_rcnn", "--score-threshold": "mask_rcnn",
                    "--detections-per-image": "mask_rcnn", "--box-decimals": "mask_rcnn",
                    "--scored-images": "mask_rcnn"},
    "predict.py": {"--sliding": "pspnet", "--crop": "pspnet", "--flip": "pspnet", "--scales": "pspnet",
                   "--score-threshold": "mask_rcnn", "--short-side": "mask_rcnn", "--long-side": "mask_rcnn",
                   **PROTOCOL_FLAGS},
    # issue 22: the inference settings baked into the exported graph
    "models.export": {"--sliding": "pspnet", "--crop": "pspnet", "--stride": "pspnet", "--flip": "pspnet",
                      "--probabilities": "pspnet", "--short-side": "mask_rcnn", "--long-side": "mask_rcnn",
                      "--score-threshold": "mask_rcnn"},
}
VALUES = {"--crop": ["5"], "--scales": ["1"], "--boxes": ["detector"], "--class-source": ["predicted"],
          "--short-side": ["800"], "--long-side": ["1333"], "--score-threshold": ["0.5"],
          "--protocol": ["ours"], "--stride": ["5"], "--base-size": ["2048"],
          "--test-scale": ["2048,1024"],  # the defaults (or a value), given
          "--mask-rule": ["above"], "--detections-per-image": ["100"], "--box-decimals": ["none"],
          "--scored-images": ["evaluated"]}
OTHER = {"pspnet": "mask_rcnn", "mask_rcnn": "pspnet"}
REQUIRED = {"evaluate.py": ["--checkpoint", "c.keras", "--data", "d", "--out", "o"],
            "predict.py": ["--checkpoint", "c.keras", "a.png", "--out", "o"], "models.export": ["c.keras", "o"]}


@pytest.mark.parametrize("command", sorted(MODEL_ONLY))
def test_the_model_only_flags_are_the_ones_the_issue_lists(command):
    parser = _parsers()[command]
    assert parser.model_flags == {
        flag: (model,) for flag, model in MODEL_ONLY[command].items()}


@pytest.mark.parametrize("command, flag", [(c, f) for c in sorted(MODEL_ONLY) for f in MODEL_ONLY[c]])
def test_a_flag_of_the_other_model_is_refused_even_at_its_default_value(command, flag, capsys):
    owner = MODEL_ONLY[command][flag]
    parser = _parsers()[command]
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(REQUIRED[command] + ["--model", OTHER[owner], flag] + VALUES.get(flag, []))
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (f"{parser.prog}: error: argument {flag}: not used by --model {OTHER[owner]}, "
                                       f"only by --model {owner}; leave it out (see --help)\n")
    parser.parse_args(REQUIRED[command] + ["--model", owner, flag] + VALUES.get(flag, []))  # its own model: fine


@pytest.mark.parametrize("text, crop", [("713", (713, 713)), ("512,1024", (512, 1024)), ("512x1024", (512, 1024))])
def test_crop_is_one_number_or_h_w_in_every_command(text, crop, tmp_path):
    assert evaluate.build_parser().parse_args(REQUIRED["evaluate.py"] + ["--crop", text]).crop == crop
    assert predict.build_parser().parse_args(REQUIRED["predict.py"] + ["--crop", text]).crop == crop
    assert parse_config(pspnet_recipe, ["--data", str(tmp_path), "--crop", text]).crop == crop


def _output_runs(tmp_path):
    """(command, main, flag, argv for an output path, the path's suffix): every command that writes."""
    (tmp_path / "in.pth").write_bytes(b"not read: the output is refused first")
    data = str(tmp_path / "data")
    return [
        ("evaluate.py", evaluate.main, "--out",
         lambda out: ["--checkpoint", "c.keras", "--data", data, "--out", out], ""),
        ("predict.py", predict.main, "--out", lambda out: ["--checkpoint", "c.keras", "a.png", "--out", out], ""),
        ("train.py", train.main, "--out", lambda out: ["--data", data, "--out", out], ""),
        ("models.convert", convert_command.main, "OUT",
         lambda out: ["torchvision-resnet50", str(tmp_path / "in.pth"), out], ".keras"),
        ("models.export", export_command.main, "OUT", lambda out: ["c.keras", out], ""),
        ("data.coco", coco_command.main, "--out", lambda out: [data, "--out", out], ""),
        ("data.samples", samples_command.main, "OUT_DIR", lambda out: ["coco", out], ""),
        ("benchmarks", benchmarks_command.main, "--json", lambda out: ["--json", out], ".json"),
    ]


@pytest.mark.parametrize("index", range(8))
def test_an_output_path_that_cannot_be_written_is_one_line_naming_it(tmp_path, monkeypatch, index):
    name, main, flag, argv, suffix = _output_runs(tmp_path)[index]
    (tmp_path / "file").write_text("mine")
    before = sorted(os.listdir(tmp_path))
    under_file = str(tmp_path / "file" / "x") + suffix
    with pytest.raises(SystemExit) as exit_:
        main(argv(under_file))
    assert exit_.value.code == (f"{flag} {under_file}: lies under the file {tmp_path / 'file'}, not a folder; "
                                f"pass another {flag}")
    if not suffix:  # a folder output given as a file
        with pytest.raises(SystemExit) as exit_:
            main(argv(str(tmp_path / "file")))
        assert exit_.value.code == f"{flag} {tmp_path / 'file'}: is a file, not a folder; pass another {flag}"
    with pytest.raises(UsageError):  # --debug: the error itself, with its traceback
        main(argv(under_file) + ["--debug"])
    out = str(tmp_path / "new") + suffix
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a user without write permission there
    with pytest.raises(SystemExit) as exit_:
        main(argv(out))
    assert exit_.value.code == f"{flag} {out}: no permission to write in {tmp_path}; pass another {flag}"
    assert sorted(os.listdir(tmp_path)) == before and (tmp_path / "file").read_text() == "mine"


def test_what_a_user_sees_from_the_commands_that_refuse_before_tensorflow(tmp_path):
    (tmp_path / "file").write_text("mine")
    out = str(tmp_path / "file" / "out")
    runs = [
        (["evaluate.py", "--checkpoint", "c.keras", "--data", "d", "--out", out], "--out", out),
        (["predict.py", "--checkpoint", "c.keras", "a.png", "--out", out], "--out", out),
        (["-m", "data.samples", "coco", out], "OUT_DIR", out),
        (["-m", "benchmarks", "--json", out + ".json"], "--json", out + ".json"),
    ]
    for argv, flag, path in runs:
        assert _run(*argv) == (1, [f"{flag} {path}: lies under the file {tmp_path / 'file'}, not a folder; "
                                   f"pass another {flag}"]), argv
    assert _run("evaluate.py", "--model", "mask_rcnn", "--checkpoint", "c.keras", "--data", "d", "--out", "o",
                "--sliding") == (2, ["evaluate.py: error: argument --sliding: not used by --model mask_rcnn, only by "
                                     "--model pspnet; leave it out (see --help)"])
    assert _run("predict.py", "--checkpoint", "c.keras", "a.png", "--out", "o", "--short-side", "600") == (
        2, ["predict.py: error: argument --short-side: not used by --model pspnet, only by --model mask_rcnn; "
            "leave it out (see --help)"])
    status, lines = _run("-m", "data.samples", "coco", out, "--debug")
    assert status == 1 and lines[0].startswith("Traceback") and lines[-1] == (
        f"data.errors.UsageError: OUT_DIR {out}: lies under the file {tmp_path / 'file'}, not a folder; "
        "pass another OUT_DIR")


@pytest.mark.slow
def test_what_a_user_sees_from_the_commands_that_import_tensorflow_first(tmp_path):
    (tmp_path / "file").write_text("mine")
    (tmp_path / "in.pth").write_bytes(b"junk")
    out = str(tmp_path / "file" / "out")
    runs = [
        (["train.py", "--data", str(tmp_path / "data"), "--out", out], "--out", out),
        (["-m", "models.convert", "torchvision-resnet50", str(tmp_path / "in.pth"), out + ".keras"], "OUT",
         out + ".keras"),
        (["-m", "data.coco", "prepare", str(tmp_path / "data"), "--out", out], "--out", out),
        (["-m", "models.export", str(tmp_path / "in.pth"), out], "OUT", out),
    ]
    for argv, flag, path in runs:
        assert _run(*argv) == (1, [f"{flag} {path}: lies under the file {tmp_path / 'file'}, not a folder; "
                                   f"pass another {flag}"]), argv
    assert _run("-m", "data.coco") == (
        2, ["python -m data.coco: error: the following arguments are required: COMMAND (see --help)"])
    status, lines = _run("train.py", "--model", "unet")  # (how argparse quotes the choices depends on Python)
    assert status == 2 and len(lines) == 1
    assert lines[0].startswith("train.py: error: argument --model: invalid choice: 'unet'")


def _raises_system_exit(path):
    """Line numbers of `raise SystemExit...` and `sys.exit(...)` in a Python file."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        target = node.exc if isinstance(node, ast.Raise) else node if isinstance(node, ast.Call) else None
        callee = target.func if isinstance(target, ast.Call) else target
        is_sys_exit = isinstance(callee, ast.Attribute) and callee.attr == "exit" and (
            getattr(callee.value, "id", "") == "sys")
        if is_sys_exit or (isinstance(callee, ast.Name) and callee.id == "SystemExit"):
            found.add(node.lineno)
    return sorted(found)


def test_library_code_raises_user_errors_never_system_exit():
    # Only the commands turn errors into exit codes: data.cli.user_errors, and the __main__ modules' sys.exit.
    offenders = []
    for package in ("data", "losses", "models", "benchmarks"):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in sorted(files):
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, ROOT)
                if not name.endswith(".py") or name == "__main__.py" or relative == "data/cli.py":
                    continue
                offenders += [f"{relative}:{line}" for line in _raises_system_exit(path)]
    assert not offenders, offenders

"""What the commands' progress looks like in a log: run a command with stderr piped (not a terminal), pick out its
progress lines and check each is one whole update (count, rate, time left; the last: the time in all).

The pattern is written from data.progress's documented format, not taken from the module.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LINE = re.compile(r"^(?P<label>[a-z ]+) \[[#-]{20}\] (?P<count>\d+)/(?P<total>\d+) (?P<unit>[a-z]+)s, "
                   r"(\d+\.\d\d (?P=unit)s/s|\d+\.\d s/(?P=unit)), (?P<time>\d+:\d\d(:\d\d)?) (?P<when>left|in all)$")


def run_piped(args, timeout=600):
    """Runs `python ARGS...` in the repository root with stdout and stderr piped -> (exit status, stderr text)."""
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=timeout)
    return result.returncode, result.stderr


def progress_lines(stderr, label):
    """The lines of `stderr` that start with the progress label (e.g. "evaluating [")."""
    return [line for line in stderr.splitlines() if line.startswith(f"{label} [")]


def check_progress(stderr, label, total, unit):
    """Asserts stderr holds `label`'s progress as separate whole lines counting up to total, the last one final."""
    assert "\r" not in stderr and "\x1b" not in stderr, "a terminal redraw in a log"
    lines = progress_lines(stderr, label)
    assert lines, f"no {label!r} progress in:\n{stderr}"
    matches = [_LINE.match(line) for line in lines]
    assert all(matches), f"not a progress line: {lines[[bool(m) for m in matches].index(False)]!r}"
    counts = [int(m["count"]) for m in matches]
    assert counts == sorted(set(counts)) and counts[-1] == total
    assert {(m["label"], int(m["total"]), m["unit"]) for m in matches} == {(label, total, unit)}
    assert [m["when"] for m in matches] == ["left"] * (len(lines) - 1) + ["in all"]
    return lines

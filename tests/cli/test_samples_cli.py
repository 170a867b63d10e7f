"""python -m data.samples: one-line errors, never writing over a dataset."""
import subprocess
import sys

ROOT = __file__.rsplit("/tests/", 1)[0]


def _samples(*args):
    return subprocess.run([sys.executable, "-m", "data.samples", *args], cwd=ROOT, capture_output=True, text=True)


def test_refuses_to_write_over_an_existing_sample_with_one_line(tmp_path):
    first = _samples("coco", str(tmp_path), "--num-train", "1", "--num-val", "1", "--size", "64x64")
    assert first.returncode == 0, first.stderr
    again = _samples("coco", str(tmp_path), "--num-train", "1", "--num-val", "1", "--size", "64x64")
    assert again.returncode == 2
    assert "Traceback" not in again.stderr and str(tmp_path) in again.stderr


def test_bad_size_is_a_usage_error():
    bad = _samples("cityscapes", "/tmp/unused", "--size", "big")
    assert bad.returncode == 2 and "--size" in bad.stderr

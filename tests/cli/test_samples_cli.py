"""python -m data.samples: one-line errors, never writing over a dataset."""
import subprocess
import sys

ROOT = __file__.rsplit("/tests/", 1)[0]


def _samples(*args):
    return subprocess.run([sys.executable, "-m", "data.samples", *args], cwd=ROOT, capture_output=True, text=True)


def test_refuses_to_write_over_an_existing_sample_with_one_line(tmp_path):
    first = _samples("coco", str(tmp_path), "--num-train", "1", "--num-val", "1", "--size", "64x64")
    assert first.returncode == 0, first.stderr
    again = _samples("coco", str(tmp_path), "--num-train", "1", "--num-val", "1", "--size", "64")  # 64 = 64x64
    assert again.returncode == 1  # a user error, not a parse error
    assert again.stderr.splitlines() == [f"{tmp_path}/annotations/instances_train2017.json already exists; "
                                         "choose an empty folder for the COCO sample"]


def test_bad_size_or_count_is_one_line():
    bad = _samples("cityscapes", "/tmp/unused", "--size", "big")
    assert (bad.returncode, bad.stderr.splitlines()) == (2, [
        "python -m data.samples: error: argument --size: takes one number or two like 713 or 512,1024 (H,W), "
        "got 'big' (see --help)"])
    small = _samples("cityscapes", "/tmp/unused", "--size", "16x64")
    assert (small.returncode, small.stderr.splitlines()) == (2, [
        "python -m data.samples: error: argument --size: must be at least 32x32, got '16x64' (see --help)"])
    none = _samples("coco", "/tmp/unused", "--num-val", "0")
    assert (none.returncode, none.stderr.splitlines()) == (1, ["--num-val must be positive, got 0"])

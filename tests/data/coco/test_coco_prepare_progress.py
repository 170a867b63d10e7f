"""python -m data.coco prepare shows the conversion's progress in a log (stderr piped) and none with --quiet."""
from progress_output import check_progress, progress_lines, run_piped

from data.samples.coco import write_coco_sample


def test_prepare_shows_progress_per_shard_and_quiet_silences_it(tmp_path):
    root = str(tmp_path / "coco")
    write_coco_sample(root, num_train=1, num_val=5, size=(24, 32), seed=0)
    command = ["-m", "data.coco", "prepare", root, "--split", "val", "--images-per-shard", "2", "--workers", "1"]
    status, stderr = run_piped(command + ["--out", tmp_path / "shown"])
    assert status == 0, stderr
    lines = check_progress(stderr, "converting", 5, "image")
    assert lines[0].split("] ")[1].startswith("2/5 images")  # counted a shard (2 images) at a time
    status, stderr = run_piped(command + ["--out", tmp_path / "quiet", "--quiet"])
    assert status == 0, stderr
    assert progress_lines(stderr, "converting") == [] and "images/s" not in stderr and "s/image" not in stderr
    assert (tmp_path / "quiet" / "val2017_mask56" / "manifest.json").is_file()


def test_a_resumed_conversion_counts_from_the_images_done_and_rates_only_its_own(tmp_path):
    import io
    import itertools
    import os

    from data import coco
    from data.coco.convert import convert
    from data.progress import Progress

    root = str(tmp_path / "coco")
    write_coco_sample(root, num_train=1, num_val=5, size=(24, 32), seed=0)
    out = tmp_path / "records"
    convert(*coco.split_paths(root, "val"), str(out), images_per_shard=2, num_workers=1, log=lambda line: None,
            progress=Progress(quiet=True))
    os.remove(out / "manifest.json")
    os.remove(out / "shard-00001-of-00003.tfrecord")  # 2 of the 5 images to convert again
    stream, ticks = io.StringIO(), itertools.count()
    convert(*coco.split_paths(root, "val"), str(out), images_per_shard=2, num_workers=1, log=lambda line: None,
            progress=Progress(stream=stream, clock=lambda: float(next(ticks))))  # 1 s between two readings
    # Started at 3 of 5; the one update (2 images) is the last, so only close() shows: 2 images in 1 s.
    assert stream.getvalue() == "converting [####################] 5/5 images, 2.00 images/s, 0:01 in all\n"

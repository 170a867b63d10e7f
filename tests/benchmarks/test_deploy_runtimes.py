"""benchmarks.deploy_runtimes: the int8 calibration images; an export that fails is reported, not fatal."""
import numpy as np

from benchmarks import deploy_runtimes
from data.images import read_image


def test_calibration_images_are_distinct_crops_at_the_served_size(tmp_path):
    paths = deploy_runtimes.calibration_images(tmp_path / "calibration", (45, 61), 4)
    images = [read_image(path) for path in paths]
    assert len(paths) == 4 and all(image.shape == (45, 61, 3) for image in images)
    # Different crops of one photo: no two alike, and each a photo (not one flat colour).
    assert all(np.abs(a.astype(int) - b).mean() > 2 for i, a in enumerate(images) for b in images[i + 1:])
    assert all(image.std() > 10 for image in images)


def test_a_failing_export_is_a_reported_row_not_the_end_of_the_run(tmp_path):
    # The exporting process fails (no such checkpoint): both runtimes of that format are reported, with its last line.
    missing = str(tmp_path / "missing.keras")
    paths, info, failed = deploy_runtimes.export("pspnet", missing, str(tmp_path), ["OpenVINO fp32", "OpenVINO int8"],
                                                 calibration=["unused.png"])
    assert paths == {} and info == {}
    assert set(failed) == {"OpenVINO fp32", "OpenVINO int8"}
    assert all("missing.keras" in message for message in failed.values()), failed

"""benchmarks.deploy_runtimes: the int8 calibration images and the export table's failure handling."""
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


def test_a_failing_export_is_reported_and_the_others_still_written(tmp_path, monkeypatch):
    from models.export import formats

    def write(serving, out, fmt, input_size=None):
        if fmt == "onnx":
            raise RuntimeError("first line\nConversion is failed for: Loop-15\n")
        return formats.artifact_path(out, fmt)

    monkeypatch.setattr(formats, "write", write)
    paths, seconds, failed = deploy_runtimes.export(None, str(tmp_path), ["onnxruntime", "SavedModel"])
    assert paths == {"SavedModel": formats.artifact_path(str(tmp_path / "saved_model"), "saved_model")}
    assert failed == {"onnxruntime": "RuntimeError: Conversion is failed for: Loop-15"}
    assert set(seconds) == {"saved_model"}

"""python -m models.convert shows the weights being assigned in a log (stderr piped) and nothing with --quiet."""
import torch  # noqa: F401  (before TensorFlow: see tests/conftest.py)
from progress_output import check_progress, progress_lines, run_piped

from benchmarks.torch_pspnet import SemsegPSPNet


def test_convert_shows_progress_over_the_tensors_and_quiet_silences_it(tmp_path, torch_seed):
    state = SemsegPSPNet(50, classes=3, width=8).state_dict()
    # As semseg's training saves it: DataParallel's prefix, wrapped in "state_dict".
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "m.pth")
    status, stderr = run_piped(["-m", "models.convert", "semseg-pspnet", tmp_path / "m.pth", tmp_path / "m.keras"])
    assert status == 0, stderr
    check_progress(stderr, "assigning weights", len(state), "tensor")  # every tensor, num_batches_tracked too
    status, stderr = run_piped(["-m", "models.convert", "semseg-pspnet", tmp_path / "m.pth", tmp_path / "q.keras",
                                "--quiet"])
    assert status == 0, stderr
    assert progress_lines(stderr, "assigning weights") == [] and "tensors/s" not in stderr
    assert (tmp_path / "q.keras").is_file()

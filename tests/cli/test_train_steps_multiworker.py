"""--steps N on two workers (MultiWorkerMirroredStrategy over 127.0.0.1, the custom loop), both recipes: a fresh
run ends at step N with its last epoch shortened, a run killed mid-way and resumed with a smaller --steps ends
there, and one resumed at or past --steps ends at once on both workers. Steps: optimizer.iterations in the
chief's saved state (h5py)."""
import pytest

from test_train_steps import DETECTOR, PSPNET, cityscapes_root, coco_root  # noqa: F401  (fixtures)
from steps_checks import saved_iterations
from train_processes import kill_when, run_train, steps_done, two_worker_envs


def _workers(tmp_path, envs, flags):
    """Both workers of `flags` started; the chief writes tmp_path/run, the other worker's --out stays empty."""
    return [run_train(flags + ["--out", str(tmp_path / ("run" if index == 0 else "worker1")),
                               "--strategy", "multiworker", "--verbose", "1"], env=env)
            for index, env in enumerate(envs)]


def _finish(processes):
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("model", ["pspnet", "mask_rcnn"])
def test_two_workers_end_at_steps_fresh_and_resumed(tmp_path, request, model):
    root = request.getfixturevalue("cityscapes_root" if model == "pspnet" else "coco_root")
    flags = ["--data", root, "--resume"] + (PSPNET if model == "pspnet" else DETECTOR)  # _workers: --verbose 1
    out = str(tmp_path / "run")
    envs = two_worker_envs()

    outputs = _finish(_workers(tmp_path, envs, flags + ["--steps", "3"]))  # above --steps-per-epoch 2
    assert saved_iterations(out) == 3 and "epoch 2/2" in outputs[0], outputs[0]

    kill_when(_workers(tmp_path, envs, flags + ["--steps", "12", "--save-every", "1"]), out, at_least_steps=4,
              delay=0.0)
    saved = steps_done(out)
    assert 4 <= saved < 11 and saved_iterations(out) == saved
    outputs = _finish(_workers(tmp_path, envs, flags + ["--steps", str(saved + 1)]))  # smaller than the saved 12
    assert f"worker other: starting at step {saved}" in outputs[1], outputs[1]
    assert f"--resume: --steps {saved + 1} (saved: 12); the learning-rate schedule is recomputed" in outputs[0]
    assert saved_iterations(out) == saved + 1

    outputs = _finish(_workers(tmp_path, envs, flags + ["--steps", str(saved)]))  # at or past: both end at once
    assert f"the run is at step {saved + 1} already, at or past --steps {saved}" in outputs[0], outputs[0]
    assert saved_iterations(out) == saved + 1

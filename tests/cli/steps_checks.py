"""What a run folder's saved state says, read with h5py and zipfile (not with the code under test), and a stop
signal sent to this process at a given optimizer step."""
import io
import json
import os
import signal
import zipfile

import h5py


def _checkpoint(out):
    """The .keras file the run's state.json names (what --resume starts from)."""
    with open(os.path.join(out, "state.json")) as f:
        return os.path.join(out, json.load(f)["checkpoint"])


def saved_iterations(out):
    """optimizer.iterations in the run's saved state: the optimizer's first variable in model.weights.h5."""
    with zipfile.ZipFile(_checkpoint(out)) as archive:
        with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as weights:
            return int(weights["optimizer/vars/0"][()])


def saved_learning_rate_config(out):
    """The learning-rate schedule's config in the saved state's compile config (config.json in the .keras zip)."""
    with zipfile.ZipFile(_checkpoint(out)) as archive:
        config = json.loads(archive.read("config.json"))
    return config["compile_config"]["optimizer"]["config"]["learning_rate"]["config"]


def stop_at_step(monkeypatch, step):
    """SIGTERM to this process once the optimizer has made `step` steps (as `kill -TERM` would)."""
    from models.training.callbacks import RunCheckpoints

    on_batch_end = RunCheckpoints.on_train_batch_end

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == step and self.stop.signal is None:
            os.kill(os.getpid(), signal.SIGTERM)
        on_batch_end(self, batch, logs)

    monkeypatch.setattr(RunCheckpoints, "on_train_batch_end", on_train_batch_end)

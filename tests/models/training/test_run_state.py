"""models/training/run_state.py: the run's resumable state as one atomic unit: a save stopped at any point, or failing for a full disk,
leaves a state that loads and agrees with itself; stop signals end training after one save."""
import errno
import json
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from data.errors import Stopped
from models import training
from models.training import run_state


class Killed(BaseException):
    """Stands for the process dying at that point (nothing after it runs)."""


def _model():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="body")(inputs)
    hidden = keras.layers.Dropout(0.5, name="drop")(hidden)  # a random generator that .keras files leave out
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(hidden))
    model.compile(optimizer=training.SegmentationSGD(0.1, momentum=0.9), loss="mse")
    return model


def _step(model, weights=None):
    """One training step; records the weights after it in `weights` (by step)."""
    model.train_on_batch(np.ones((2, 3), np.float32), np.zeros((2, 1), np.float32))
    step = int(model.optimizer.iterations.numpy())
    if weights is not None:
        weights[step] = [w.copy() for w in model.get_weights()]
    return step


def _save(model, run_dir, previous):
    return run_state.save_run_state(model, run_dir, steps_done=int(model.optimizer.iterations.numpy()),
                                      epochs_done=0, best=None, monitor="loss", best_improved=False,
                                      previous=previous, epoch_file="epoch_001.keras")


def _check_consistent(run_dir, weights_at_step):
    """The manifest's checkpoint loads, is at the manifest's step, and holds that step's weights."""
    state = run_state.prepare_run_dir(run_dir, resume=True)  # also repairs last.keras
    model = run_state.load_run_model(run_dir, state)
    step = int(model.optimizer.iterations.numpy())
    assert step == state["steps_done"]
    for got, want in zip(model.get_weights(), weights_at_step[step]):
        np.testing.assert_array_equal(got, want)
    last = keras.saving.load_model(os.path.join(run_dir, run_state.LAST_CHECKPOINT), safe_mode=True)
    assert int(last.optimizer.iterations.numpy()) == step
    assert not [f for f in os.listdir(run_dir) if ".tmp" in f]
    return step


@pytest.mark.parametrize("point", range(1, 6))
def test_a_save_killed_at_each_write_leaves_a_consistent_state(tmp_path, monkeypatch, point):
    run_dir = str(tmp_path)
    model = _model()
    weights = {}
    _step(model, weights)
    state = _save(model, run_dir, None)
    _step(model, weights)
    calls = []
    real_replace = os.replace

    def replace(src, dst):  # the renames in order: ckpt, state.json (the commit), last.keras, epoch file
        calls.append(dst)
        if len(calls) == point:
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(run_state.os, "replace", replace)
    try:
        _save(model, run_dir, state)
        reached_end = True
    except Killed:
        reached_end = False
    monkeypatch.setattr(run_state.os, "replace", real_replace)
    step = _check_consistent(run_dir, weights)
    committed = point > 2 or reached_end  # the second rename is the commit
    assert step == (2 if committed else 1), calls


def test_resume_restores_the_random_generators(tmp_path):
    run_dir = str(tmp_path)
    model = _model()
    _step(model)
    state = _save(model, run_dir, None)
    loaded = run_state.load_run_model(run_dir, state)
    assert run_state.seed_states(loaded) == run_state.seed_states(model)
    x = np.ones((4, 3), np.float32)
    np.testing.assert_array_equal(loaded(x, training=True), model(x, training=True))  # same Dropout mask


@pytest.mark.parametrize("where", ["model", "manifest"])
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, where):
    run_dir = str(tmp_path)
    model = _model()
    weights = {}
    _step(model, weights)
    state = _save(model, run_dir, None)
    _step(model)

    def full(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a file")  # what a full disk leaves behind
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "model":
        monkeypatch.setattr(model, "save", full)
    else:
        monkeypatch.setattr(run_state.json, "dump", lambda data, f, **kw: full(f.name))
    with pytest.raises(run_state.CheckpointSaveError) as error:
        _save(model, run_dir, state)
    message = str(error.value)
    assert "No space left on device" in message and "step 2" in message
    assert f"{os.path.join(run_dir, state['checkpoint'])} (step 1) is intact" in message
    assert run_state.read_state(run_dir) == state
    assert _check_consistent(run_dir, weights) == 1


def test_a_full_disk_during_training_stops_with_one_line(tmp_path, monkeypatch):
    model = _model()
    callbacks, _ = training.standard_callbacks(str(tmp_path), monitor="loss", mode="min", save_every=2)
    dataset = tf.data.Dataset.from_tensor_slices((np.ones((16, 3), np.float32), np.zeros((16, 1), np.float32)))
    real_save = model.save
    saves = []

    def save_then_fill(path, *args, **kwargs):
        saves.append(path)
        if len(saves) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(path, *args, **kwargs)

    monkeypatch.setattr(model, "save", save_then_fill)
    with pytest.raises(run_state.CheckpointSaveError, match=r"step 4 failed \(No space left on device\); the "
                                                         r"previous checkpoint .* \(step 2\) is intact"):
        training.fit_from_step(model, lambda skip: dataset.batch(2).skip(skip), start_step=0, steps_per_epoch=8,
                               total_steps=8, callbacks=callbacks, verbose=0)
    assert json.loads((tmp_path / "state.json").read_text())["steps_done"] == 2


def test_a_stop_signal_saves_once_then_stops(tmp_path):
    model = _model()
    callbacks, _ = training.standard_callbacks(str(tmp_path), monitor="loss", mode="min")

    class SendSignal(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    dataset = tf.data.Dataset.from_tensor_slices((np.ones((40, 3), np.float32), np.zeros((40, 1), np.float32)))
    with pytest.raises(Stopped) as stop:
        training.fit_from_step(model, lambda skip: dataset.batch(2).repeat().skip(skip), start_step=0,
                               steps_per_epoch=10, total_steps=20, callbacks=[SendSignal()] + callbacks, verbose=0)
    assert stop.value.exit_status == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == previous  # the handlers are put back
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["steps_done"] == int(model.optimizer.iterations.numpy()) == 3 and state["epochs_done"] == 0
    assert not (tmp_path / "epoch_001.keras").exists()  # a stopped epoch is not an epoch


def test_a_second_signal_exits_at_once(monkeypatch):
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    stop = training.StopSignals()
    stop._handle(signal.SIGINT, None)
    assert stop.signal == signal.SIGINT and not exits
    stop._handle(signal.SIGINT, None)
    assert exits == [128 + signal.SIGINT]


def test_a_run_stopped_mid_epoch_and_resumed_ends_with_the_uninterrupted_weights(tmp_path):
    """Mid-epoch resume: the rest of the epoch, then whole epochs, the data order of the first run,
    the same Dropout masks and learning-rate position (a schedule that changes every step)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)).astype(np.float32), rng.normal(size=(12, 1)).astype(np.float32)

    def data(skip):
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(12, seed=1).repeat().batch(2)
        return dataset.skip(skip)

    def fresh():
        model = _model()
        model.compile(optimizer=training.SegmentationSGD(training.poly_schedule(0.02, 12), momentum=0.9), loss="mse")
        return model

    def run(model, run_dir, start_step, state, extra=()):
        if state is None:
            run_state.prepare_run_dir(run_dir, resume=False)
        callbacks, _ = training.standard_callbacks(run_dir, monitor="loss", mode="min", initial_state=state)
        training.fit_from_step(model, data, start_step=start_step, steps_per_epoch=4, total_steps=12,
                               callbacks=list(extra) + callbacks, verbose=0)

    uninterrupted, stopped = fresh(), fresh()
    stopped.set_weights(uninterrupted.get_weights())
    run_state.restore_seed_states(stopped, run_state.seed_states(uninterrupted))
    run(uninterrupted, str(tmp_path / "a"), 0, None)

    class StopAtStep6(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 6:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Stopped):
        run(stopped, str(tmp_path / "b"), 0, None, extra=[StopAtStep6()])
    state = run_state.prepare_run_dir(str(tmp_path / "b"), resume=True)
    assert state["steps_done"] == 6 and state["epochs_done"] == 1  # in the middle of epoch 2
    resumed = run_state.load_run_model(str(tmp_path / "b"), state)
    run(resumed, str(tmp_path / "b"), state["steps_done"], state)
    assert int(resumed.optimizer.iterations.numpy()) == 12
    assert run_state.read_state(str(tmp_path / "b"))["epochs_done"] == 3
    for got, want in zip(resumed.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)

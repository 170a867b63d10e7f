"""The callbacks every training run uses, whatever the model: checkpoints that survive
interruption, stop signals, a guard against non-finite losses, curves and logs, and
the fit that starts at a saved step.

Run folder layout (one run = one folder; nothing in it is overwritten by
another run, see `prepare_run_dir`):

    config.json          the resolved configuration
    state.json           the manifest of the resumable state: steps and epochs done,
                         best metric so far, which ckpt_*.keras holds the state
    ckpt_000000120.keras the model at a saved step (what --resume starts from)
    last.keras           the newest good checkpoint (a link to the manifest's ckpt_*)
    best.keras           the checkpoint with the best monitored metric
    epoch_003.keras      the model after each epoch (the newest few are kept)
    history.csv          one row of logs per epoch (Keras CSVLogger)
    curves.png           train/val loss and the monitored metric per epoch
    tensorboard/         TensorBoard event files
"""
import math
import os
import signal
import sys
import threading

import keras
import numpy as np

from data.errors import Stopped, UserError
from models.training.run_state import LAST_CHECKPOINT, read_state, save_run_state
from models.training.curves import TrainingCurves


class NonFiniteLoss(UserError):
    """Training stopped at a NaN/inf loss; str() names the step and the last good checkpoint."""


# ----------------------------------------------------------------------------
# Checkpoints, stops and resume (the files: models/training/run_state.py)
# ----------------------------------------------------------------------------

class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops training at the first NaN/inf loss and remembers where, so no checkpoint is written after it."""

    def __init__(self):
        super().__init__()
        self.failed_at = None  # (epoch, batch, value, optimizer step)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.failed_at is None:
            self.failed_at = (self._epoch, batch, float(loss), int(self.model.optimizer.iterations.numpy()))
            self.model.stop_training = True

    def message(self, run_dir):
        epoch, batch, value, step = self.failed_at
        state = read_state(run_dir)
        kept = (f"the last good checkpoint is {os.path.join(run_dir, LAST_CHECKPOINT)} (step {state['steps_done']})"
                if state else "no checkpoint had been saved yet")
        return (f"training stopped: the loss became {value} at step {step} (epoch {epoch + 1}, batch {batch + 1}); "
                f"{kept} (lower --lr, or check the data for bad labels)")


class StopSignals:
    """SIGINT / SIGTERM: the first asks training to stop after a save, a second ends the process at once.

    install() / restore() swap the process's handlers (main thread only; elsewhere they do nothing).
    `signal` is the first signal's number once one came, else None.
    """

    def __init__(self):
        self.signal = None
        self._previous = {}

    def install(self):
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._handle)

    def restore(self):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number, frame):
        if self.signal is not None:  # the second one: no save, no clean-up
            os._exit(128 + number)
        self.signal = number
        print(f"\n{signal.Signals(number).name}: stopping after this step's save (send it again to quit at once)",
              file=sys.stderr, flush=True)


class RunCheckpoints(keras.callbacks.Callback):
    """Saves the run's resumable state (models/training/run_state.py) after each epoch, every `save_every` steps,
    and when a stop signal came (then stops training).

    Nothing is saved once `guard` has seen a non-finite loss, so the saved state
    always holds good weights. best.keras follows `monitor` (at epoch ends);
    the newest `keep` epoch_NNN.keras files are kept. Only the chief writes.
    """

    def __init__(self, run_dir, guard, monitor="val_miou", mode="max", keep=3, initial_state=None, is_chief=True,
                 save_every=0):
        super().__init__()
        self.run_dir = run_dir
        self.guard = guard
        self.monitor = monitor
        self.better = np.greater if mode == "max" else np.less
        self.keep = keep
        self.state = initial_state
        self.best = (initial_state or {}).get("best")
        self.is_chief = is_chief
        self.save_every = int(save_every)
        self.stop = StopSignals()
        self._epoch = 0
        self._epoch_complete = True  # no batch of this epoch was cut short
        self._saved_step = (initial_state or {}).get("steps_done")

    def on_train_begin(self, logs=None):
        self.stop.install()

    def on_train_end(self, logs=None):
        self.stop.restore()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_complete = True

    def on_train_batch_end(self, batch, logs=None):
        if self.guard.failed_at is not None:
            return
        if self.stop.signal is not None:
            self.model.stop_training = True
        steps = (self.params or {}).get("steps")
        # The epoch's own save comes next when this was its last batch.
        self._epoch_complete = batch + 1 == steps if steps else not self.model.stop_training
        step = int(self.model.optimizer.iterations.numpy())
        if self._epoch_complete:
            return
        if self.stop.signal is not None or (self.save_every and step % self.save_every == 0):
            self._save(step, epochs_done=self._epoch)

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.failed_at is not None or not self._epoch_complete:
            return  # a stopped epoch was saved by its last batch, if at all
        value = (logs or {}).get(self.monitor)
        improved = value is not None and math.isfinite(value) and (self.best is None or self.better(value, self.best))
        if improved:
            self.best = float(value)
        self._save(int(self.model.optimizer.iterations.numpy()), epochs_done=epoch + 1, best_improved=improved,
                   epoch_file=f"epoch_{epoch + 1:03d}.keras")

    def _save(self, step, *, epochs_done, best_improved=False, epoch_file=None):
        if not self.is_chief or (step == self._saved_step and not epoch_file):
            return
        self.state = save_run_state(self.model, self.run_dir, steps_done=step, epochs_done=epochs_done,
                                    best=self.best, monitor=self.monitor, best_improved=best_improved,
                                    previous=self.state, epoch_file=epoch_file, keep=self.keep)
        self._saved_step = step


def epoch_spans(start_step, total_steps, steps_per_epoch):
    """[(epoch, first step, end step)] of the epochs a run still trains, from start_step until total_steps.

    Epoch k holds optimizer steps [k * steps_per_epoch, (k + 1) * steps_per_epoch): epochs only group
    validation and checkpoints. The last one is shortened to end at total_steps; the first starts at
    start_step (a run resumed mid-epoch). Empty when start_step >= total_steps.
    """
    spans, epoch = [], start_step // steps_per_epoch
    while epoch * steps_per_epoch < total_steps:
        spans.append((epoch, max(epoch * steps_per_epoch, start_step), min((epoch + 1) * steps_per_epoch, total_steps)))
        epoch += 1
    return spans


def fit_from_step(model, dataset_fn, *, start_step, steps_per_epoch, total_steps, callbacks, **fit_kwargs):
    """model.fit from optimizer step `start_step` (0, or a resumed run's steps_done) to optimizer step total_steps.

    dataset_fn(skip): the training dataset with its first `skip` batches left
    out, so a resumed run sees the data order an uninterrupted run would. Whole
    epochs run in one fit; an epoch cut short (the rest of the epoch a run
    resumed in, the last one ending at total_steps) runs as a fit of its own.
    Ends with `raise_if_interrupted`; a failed save raises run_state.CheckpointSaveError.
    """
    spans = epoch_spans(start_step, total_steps, steps_per_epoch)
    while spans and not _interrupted(callbacks):
        whole = 0  # how many of the next epochs are whole: they share one fit
        while whole < len(spans) and spans[whole][2] - spans[whole][1] == steps_per_epoch:
            whole += 1
        (epoch, first, end), last = spans[0], spans[max(whole, 1) - 1]
        model.fit(dataset_fn(first), epochs=last[0] + 1, initial_epoch=epoch,
                  steps_per_epoch=steps_per_epoch if whole else end - first, callbacks=callbacks, **fit_kwargs)
        spans = spans[max(whole, 1):]
    raise_if_interrupted(callbacks)


def _interrupted(callbacks):
    saver = next(c for c in callbacks if isinstance(c, RunCheckpoints))
    return saver.guard.failed_at is not None or saver.stop.signal is not None


def raise_if_interrupted(callbacks):
    """After training: NonFiniteLoss (the guard's message) after a non-finite loss, data.errors.Stopped (exit
    status 128 + the signal) after a stop signal."""
    saver = next(c for c in callbacks if isinstance(c, RunCheckpoints))
    if saver.guard.failed_at is not None:
        raise NonFiniteLoss(saver.guard.message(saver.run_dir))
    if saver.stop.signal is not None:
        steps = (saver.state or {}).get("steps_done", 0)
        raise Stopped(f"stopped by {signal.Signals(saver.stop.signal).name} after step {steps}, saved in "
                      f"{saver.run_dir}; run the same command with --resume to continue", saver.stop.signal)


class History(keras.callbacks.CSVLogger):
    """history.csv: Keras's CSVLogger, appending from its second fit on (a run may take several fits)."""

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.append = True


def standard_callbacks(run_dir, *, monitor="val_miou", mode="max", keep=3, initial_state=None, is_chief=True,
                       save_every=0, curve_components=()):
    """The callbacks every run gets: NaN guard, checkpoints, CSV history, curves, TensorBoard.

    curve_components: logged loss components, drawn in curves.png instead of the monitored metric.

    Returns (callbacks list, guard); after training, `raise_if_interrupted(callbacks)`.
    """
    guard = NonFiniteLossGuard()
    callbacks = [guard, RunCheckpoints(run_dir, guard, monitor=monitor, mode=mode, keep=keep,
                                       initial_state=initial_state, is_chief=is_chief, save_every=save_every)]
    if is_chief:
        callbacks += [
            History(os.path.join(run_dir, "history.csv"), append=initial_state is not None),
            TrainingCurves(run_dir, metric=monitor, components=curve_components),
            keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), update_freq="epoch",
                                        write_graph=False),
        ]
    return callbacks, guard

"""What every training run needs, whatever the model: the optimizer recipe,
checkpoints that survive interruption, a guard against non-finite losses, and
curves a person can look at while it trains.

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
import tensorflow as tf

from models.run_state import (  # noqa: F401  (the run-folder names, used with these callbacks)
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    STATE_FILE,
    CheckpointSaveError,
    RunDirError,
    prepare_run_dir,
    read_state,
    save_run_state,
)


# ----------------------------------------------------------------------------
# Optimizer recipe
# ----------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="models")
class SegmentationSGD(keras.optimizers.SGD):
    """SGD with momentum, L2 weight decay on kernels, and a learning-rate multiplier for new layers.

    This is the PSPNet (and Caffe-era) recipe: the L2 term `l2 * kernel` is added
    to each convolution/dense kernel's gradient before momentum (coupled L2, as
    Caffe's weight_decay and PyTorch's SGD(weight_decay=...)), not to biases or
    BatchNorm parameters; variables of the layers named in `head_layers` (the
    newly initialised pyramid pooling module and classifiers) use
    `head_lr_multiplier` times the learning rate.

    Args:
      learning_rate: float or a keras LearningRateSchedule (e.g. `poly_schedule`).
      momentum: 0.9 in the paper.
      l2: weight decay coefficient (1e-4 in the paper).
      head_layers: names of top-level layers whose variables get the multiplier.
      head_lr_multiplier: 10 in the paper's reference code; 1 turns it off.
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, l2=1e-4, head_layers=(), head_lr_multiplier=1.0,
                 name="segmentation_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, name=name, **kwargs)
        self.l2 = float(l2)
        self.head_layers = tuple(head_layers)
        self.head_lr_multiplier = float(head_lr_multiplier)
        self._head_prefixes = tuple(f"{layer}/" for layer in self.head_layers)

    def update_step(self, gradient, variable, learning_rate):
        # Decided per variable while tracing, from its Keras path ("layer/kernel"): no run-time cost.
        # (The TF backend hands over the raw tf.Variable; its Keras variable has the path.)
        path = self._trainable_variables[self._get_variable_index(variable)].path
        if self.l2 and path.endswith("/kernel"):
            # l2 * kernel depends only on the kernel, so TensorFlow's executor computed every one at the start of
            # the step and held them through the whole forward and backward (168 MiB at the Mask R-CNN detector's
            # training-step peak, measured): computed once the gradient exists, each lives only for its update.
            with tf.control_dependencies([gradient] if isinstance(gradient, tf.Tensor) else []):
                gradient = gradient + self.l2 * keras.ops.cast(variable, gradient.dtype)
        if self.head_lr_multiplier != 1.0 and path.startswith(self._head_prefixes):
            learning_rate = learning_rate * self.head_lr_multiplier
        if self.momentum and not self.nesterov and isinstance(gradient, tf.Tensor) and not tf.distribute.has_strategy():
            # Keras's momentum step (m = momentum * m - lr * g; w += m) as TensorFlow's in-place kernel.
            # Keras's ops make three variable-sized temporaries per variable, and the executor runs the
            # updates of all variables whose gradients are ready at once: about 0.4 GB at the Mask R-CNN
            # detector's training-step peak (BENCHMARKS.md 4b). Under a tf.distribute strategy, Keras's path.
            dtype = variable.dtype
            tf.raw_ops.ResourceApplyKerasMomentum(
                var=variable.handle, accum=self.momentums[self._get_variable_index(variable)].value.handle,
                lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype), momentum=tf.cast(self.momentum, dtype),
                use_nesterov=False)
            return
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update(l2=self.l2, head_layers=list(self.head_layers), head_lr_multiplier=self.head_lr_multiplier)
        return config


def poly_schedule(base_lr, total_steps, power=0.9):
    """lr(step) = base_lr * (1 - step / total_steps) ** power, 0 after total_steps (the PSPNet "poly" policy)."""
    return keras.optimizers.schedules.PolynomialDecay(
        initial_learning_rate=base_lr, decay_steps=max(int(total_steps), 1), end_learning_rate=0.0, power=power)


@keras.saving.register_keras_serializable(package="models")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from base_lr * warmup_factor, then x `gamma` at each of `milestones` (Mask R-CNN's schedule)."""

    def __init__(self, base_lr, milestones, gamma=0.1, warmup_steps=0, warmup_factor=0.001):
        self.base_lr = float(base_lr)
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        decays = sum(keras.ops.cast(step >= m, "float32") for m in self.milestones) if self.milestones else 0.0
        lr = self.base_lr * keras.ops.power(self.gamma, decays)
        if self.warmup_steps > 0:
            alpha = keras.ops.minimum(step / self.warmup_steps, 1.0)
            lr = lr * (self.warmup_factor * (1.0 - alpha) + alpha)
        return lr

    def get_config(self):
        return dict(base_lr=self.base_lr, milestones=self.milestones, gamma=self.gamma,
                    warmup_steps=self.warmup_steps, warmup_factor=self.warmup_factor)


# ----------------------------------------------------------------------------
# Checkpoints, stops and resume (the files: models/run_state.py)
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
    """Saves the run's resumable state (models/run_state.py) after each epoch, every `save_every` steps,
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


def fit_from_step(model, dataset_fn, *, start_step, steps_per_epoch, epochs, callbacks, **fit_kwargs):
    """model.fit from optimizer step `start_step` (0, or a resumed run's steps_done) to epochs * steps_per_epoch.

    dataset_fn(skip): the training dataset with its first `skip` batches left
    out, so a resumed run sees the data order an uninterrupted run would. A run
    resumed mid-epoch first finishes that epoch with a shorter fit. Ends with
    `raise_if_interrupted`.
    """
    epoch, done = divmod(start_step, steps_per_epoch)
    try:
        if done and epoch < epochs:
            model.fit(dataset_fn(start_step), epochs=epoch + 1, initial_epoch=epoch,
                      steps_per_epoch=steps_per_epoch - done, callbacks=callbacks, **fit_kwargs)
            epoch += 1
        if epoch < epochs and not _interrupted(callbacks):
            model.fit(dataset_fn(epoch * steps_per_epoch), epochs=epochs, initial_epoch=epoch,
                      steps_per_epoch=steps_per_epoch, callbacks=callbacks, **fit_kwargs)
    except CheckpointSaveError as error:
        raise SystemExit(str(error))
    raise_if_interrupted(callbacks)


def _interrupted(callbacks):
    saver = next(c for c in callbacks if isinstance(c, RunCheckpoints))
    return saver.guard.failed_at is not None or saver.stop.signal is not None


def raise_if_interrupted(callbacks):
    """After training: SystemExit with the guard's message after a non-finite loss, or after a stop signal."""
    saver = next(c for c in callbacks if isinstance(c, RunCheckpoints))
    if saver.guard.failed_at is not None:
        raise SystemExit(saver.guard.message(saver.run_dir))
    if saver.stop.signal is not None:
        steps = (saver.state or {}).get("steps_done", 0)
        print(f"stopped by {signal.Signals(saver.stop.signal).name} after step {steps}, saved in "
              f"{saver.run_dir}; run the same command with --resume to continue", file=sys.stderr, flush=True)
        raise SystemExit(128 + saver.stop.signal)


class TrainingCurves(keras.callbacks.Callback):
    """Redraws curves.png after every epoch: train/val loss, and the monitored metric or the loss components.

    Reads history.csv (written by keras.callbacks.CSVLogger, which appends on
    resume), so a resumed run's figure shows the whole run.
    """

    def __init__(self, run_dir, metric="val_miou", csv_name="history.csv", components=()):
        super().__init__()
        self.run_dir = run_dir
        self.metric = metric
        self.components = tuple(components)
        self.csv_path = os.path.join(run_dir, csv_name)

    def on_epoch_end(self, epoch, logs=None):
        if os.path.exists(self.csv_path):
            plot_curves(self.csv_path, os.path.join(self.run_dir, "curves.png"), self.metric, self.components)


def plot_curves(csv_path, png_path, metric="val_miou", components=()):
    """history.csv -> a PNG with loss curves (left) and `metric` per epoch (right), or, when
    `components` names logged losses (a detector's five), each of them and its val_ twin (right)."""
    import csv

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]

    def number(text):
        try:
            return float(text)
        except (TypeError, ValueError):  # CSVLogger writes "NA" for a key an epoch did not log
            return np.nan

    def column(name):
        return [number(r.get(name)) for r in rows]

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("loss", "val_loss"):
        if name in rows[0]:
            left.plot(epochs, column(name), marker="o", label=name)
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend()
    left.grid(alpha=0.3)
    if components:
        for index, name in enumerate(components):
            for prefix, style in (("", "-"), ("val_", "--")):
                if prefix + name in rows[0]:
                    right.plot(epochs, column(prefix + name), style, color=f"C{index}", label=prefix + name)
        right.set_yscale("log")
        right.set_ylabel("loss components")
        right.legend(fontsize=6)
    elif metric in rows[0]:
        right.plot(epochs, column(metric), marker="o", color="tab:green", label=metric)
        right.set_ylim(0, 1)
        right.legend()
        right.set_ylabel(metric)
    right.set_xlabel("epoch")
    right.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, png_path)


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
            keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=initial_state is not None),
            TrainingCurves(run_dir, metric=monitor, components=curve_components),
            keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), update_freq="epoch",
                                        write_graph=False),
        ]
    return callbacks, guard

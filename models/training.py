"""What every training run needs, whatever the model: the optimizer recipe,
checkpoints that survive interruption, a guard against non-finite losses, and
curves a person can look at while it trains.

Run folder layout (one run = one folder; nothing in it is overwritten by
another run, see `prepare_run_dir`):

    config.json          the resolved configuration
    epoch_003.keras      the model after each epoch (the newest few are kept)
    last.keras           the newest good checkpoint (what --resume starts from)
    best.keras           the checkpoint with the best monitored metric
    state.json           epochs done, steps done, best metric so far
    history.csv          one row of logs per epoch (Keras CSVLogger)
    curves.png           train/val loss and the monitored metric per epoch
    tensorboard/         TensorBoard event files
"""
import json
import math
import os

import keras
import numpy as np


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
            gradient = gradient + self.l2 * keras.ops.cast(variable, gradient.dtype)
        if self.head_lr_multiplier != 1.0 and path.startswith(self._head_prefixes):
            learning_rate = learning_rate * self.head_lr_multiplier
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
# Run folder, checkpoints and resume
# ----------------------------------------------------------------------------

STATE_FILE = "state.json"
LAST_CHECKPOINT = "last.keras"
BEST_CHECKPOINT = "best.keras"


class RunDirError(ValueError):
    """A run folder that cannot be used as asked (one line, names the folder and the flag)."""


def read_state(run_dir):
    """The saved progress of a run ({"epochs_done", "steps_done", "best"}), or None if it has none."""
    path = os.path.join(run_dir, STATE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def prepare_run_dir(run_dir, resume):
    """Creates the run folder, or checks that it may be resumed; returns the saved state or None.

    A folder that already holds checkpoints is never trained over from scratch:
    without `resume` that is an error (the user passes --resume, or another --out).
    """
    state = read_state(run_dir)
    has_checkpoint = os.path.exists(os.path.join(run_dir, LAST_CHECKPOINT))
    if (state or has_checkpoint) and not resume:
        raise RunDirError(f"{run_dir}: already holds a training run; pass --resume to continue it, "
                          "or choose another --out")
    if resume and state and not has_checkpoint:
        raise RunDirError(f"{run_dir}: {STATE_FILE} is there but {LAST_CHECKPOINT} is missing; cannot resume")
    os.makedirs(run_dir, exist_ok=True)
    return state if has_checkpoint else None


def _atomic_save(model, path):
    # Write next to the target, then rename: a run killed mid-save never leaves a truncated checkpoint.
    tmp = path + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)


def _atomic_json(data, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops training at the first NaN/inf loss and remembers where, so no checkpoint is written after it."""

    def __init__(self):
        super().__init__()
        self.failed_at = None  # (epoch, batch, value)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.failed_at is None:
            self.failed_at = (self._epoch, batch, float(loss))
            self.model.stop_training = True

    def message(self, run_dir):
        epoch, batch, value = self.failed_at
        last = os.path.join(run_dir, LAST_CHECKPOINT)
        kept = f"the last good checkpoint is {last}" if os.path.exists(last) else "no checkpoint had been saved yet"
        return (f"training stopped: the loss became {value} at epoch {epoch + 1}, batch {batch + 1}; {kept} "
                "(lower --lr, or check the data for bad labels)")


class RunCheckpoints(keras.callbacks.Callback):
    """Saves epoch_NNN.keras, last.keras and best.keras (by `monitor`) after each epoch, with state.json.

    Nothing is saved once `guard` has seen a non-finite loss, so last.keras
    always holds good weights. Only the newest `keep` epoch files are kept
    (last.keras and best.keras always are).
    """

    def __init__(self, run_dir, guard, monitor="val_miou", mode="max", keep=3, initial_state=None, is_chief=True):
        super().__init__()
        self.run_dir = run_dir
        self.guard = guard
        self.monitor = monitor
        self.better = np.greater if mode == "max" else np.less
        self.keep = keep
        self.best = (initial_state or {}).get("best")
        self.is_chief = is_chief

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.failed_at is not None or not self.is_chief:
            return
        logs = logs or {}
        _atomic_save(self.model, os.path.join(self.run_dir, f"epoch_{epoch + 1:03d}.keras"))
        _atomic_save(self.model, os.path.join(self.run_dir, LAST_CHECKPOINT))
        value = logs.get(self.monitor)
        if value is not None and math.isfinite(value) and (self.best is None or self.better(value, self.best)):
            self.best = float(value)
            _atomic_save(self.model, os.path.join(self.run_dir, BEST_CHECKPOINT))
        steps = int(self.model.optimizer.iterations.numpy())
        _atomic_json({"epochs_done": epoch + 1, "steps_done": steps, "best": self.best, "monitor": self.monitor},
                     os.path.join(self.run_dir, STATE_FILE))
        old = sorted(f for f in os.listdir(self.run_dir) if f.startswith("epoch_") and f.endswith(".keras"))
        for name in old[:-self.keep] if self.keep > 0 else []:
            os.remove(os.path.join(self.run_dir, name))


class TrainingCurves(keras.callbacks.Callback):
    """Redraws curves.png after every epoch: train/val loss, and the monitored metric.

    Reads history.csv (written by keras.callbacks.CSVLogger, which appends on
    resume), so a resumed run's figure shows the whole run.
    """

    def __init__(self, run_dir, metric="val_miou", csv_name="history.csv"):
        super().__init__()
        self.run_dir = run_dir
        self.metric = metric
        self.csv_path = os.path.join(run_dir, csv_name)

    def on_epoch_end(self, epoch, logs=None):
        if os.path.exists(self.csv_path):
            plot_curves(self.csv_path, os.path.join(self.run_dir, "curves.png"), self.metric)


def plot_curves(csv_path, png_path, metric="val_miou"):
    """history.csv -> a PNG with loss curves (left) and `metric` (right) per epoch."""
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
    if metric in rows[0]:
        right.plot(epochs, column(metric), marker="o", color="tab:green", label=metric)
        right.set_ylim(0, 1)
        right.legend()
    right.set_xlabel("epoch")
    right.set_ylabel(metric)
    right.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, png_path)


def standard_callbacks(run_dir, *, monitor="val_miou", mode="max", keep=3, initial_state=None, is_chief=True):
    """The callbacks every run gets: NaN guard, checkpoints, CSV history, curves, TensorBoard.

    Returns (callbacks list, guard); check `guard.failed_at` after fit.
    """
    guard = NonFiniteLossGuard()
    callbacks = [guard, RunCheckpoints(run_dir, guard, monitor=monitor, mode=mode, keep=keep,
                                       initial_state=initial_state, is_chief=is_chief)]
    if is_chief:
        callbacks += [
            keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=initial_state is not None),
            TrainingCurves(run_dir, metric=monitor),
            keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), update_freq="epoch",
                                        write_graph=False),
        ]
    return callbacks, guard

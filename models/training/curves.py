"""Training curves a person can look at while a run trains: curves.png from history.csv after every epoch."""
import os

import keras
import numpy as np


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

"""The training engine every recipe shares, whatever the model family.

Modules:
    optimizer    SegmentationSGD (SGD + L2 + head learning-rate multiplier), poly_schedule, WarmupStepDecay
    run_state    a run folder's resumable state (model, optimizer, step, random generators), written as one unit
    callbacks    checkpoints that survive interruption, stop signals, the non-finite-loss guard, logs;
                 fit_from_step (Keras fit resumed at a saved step)
    curves       curves.png from history.csv
    custom_loop  the strategy.run loop for multi-worker training
    recipe       settings shared by every recipe (with their --help), presets + flags -> a config (a resumed
                 run: its saved config.json), what --resume may change, strategy, run start, flag checks
    skeleton     the run every recipe shares (Recipe, train): checks, run start, model, callbacks, fit or the
                 multi-worker loop, ending at optimizer step --steps
A family's recipe (models/pspnet/recipe.py, models/mask_rcnn/recipe.py) subclasses skeleton.Recipe with its
config, presets, checks, data, model and validation; train.py dispatches to it.
"""
from models.training.callbacks import (
    NonFiniteLoss, NonFiniteLossGuard, RunCheckpoints, StopSignals, epoch_spans, fit_from_step, raise_if_interrupted,
    standard_callbacks,
)
from models.training.curves import TrainingCurves, plot_curves
from models.training.optimizer import SegmentationSGD, WarmupStepDecay, poly_schedule

__all__ = [
    "NonFiniteLoss", "NonFiniteLossGuard", "RunCheckpoints", "SegmentationSGD", "StopSignals", "TrainingCurves",
    "WarmupStepDecay",
    "epoch_spans", "fit_from_step", "plot_curves", "poly_schedule", "raise_if_interrupted", "standard_callbacks",
]

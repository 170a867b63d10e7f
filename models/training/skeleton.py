"""The run every training recipe shares: checks, run start, build or load the model, callbacks, fit (or the
multi-worker loop), ending at optimizer step --steps, fresh or resumed.

A model family subclasses `Recipe` and supplies only what differs: its checks, its
data, its compiled model and learning-rate schedule, its validation and its
per-replica step (models/pspnet/recipe.py, models/mask_rcnn/recipe.py). Then

    train(PSPNetRecipe(config))    # what train.py runs: returns the run folder

A resumed run (--resume) starts from the run folder's saved state; the settings it
may change (models.training.recipe.RESUMABLE + the family's) are said in one line
each, and a new --steps recomputes the learning-rate schedule for the new total.
"""
from models.training.recipe import flag, is_chief, shown, start_run, write_config


class Recipe:
    """One model family's part of a training run; `train` does the rest. self.config: the resolved config."""

    monitor = "val_loss"  # the epoch log that picks best.keras
    mode = "min"  # or "max"
    curve_components = ()  # logged loss components drawn in curves.png
    resumable = ()  # settings of this family a resumed run may change, beyond models.training.recipe.RESUMABLE
    total_settings = ("steps",)  # the settings that set the run's length (a change recomputes the schedule)

    def __init__(self, config):
        self.config = config

    def check(self):
        """data.errors.UsageError (one line naming the flag) for a setting no run can use; before anything runs."""
        raise NotImplementedError

    def read_data(self):
        """Index the dataset (called once, after the run folder is ready and before `plan`)."""

    def plan(self):
        """(steps_per_epoch, total_steps): the run ends at optimizer step total_steps (--steps)."""
        raise NotImplementedError

    def build_model(self, total_steps, sync_bn):
        """A new compiled keras.Model (optimizer with learning_rate(total_steps)); called inside strategy.scope()."""
        raise NotImplementedError

    def learning_rate(self, total_steps):
        """The learning-rate schedule of a run of total_steps optimizer steps."""
        raise NotImplementedError

    def train_dataset(self, skip, input_context=None):
        """Repeated training batches, the first `skip` global steps left out (one worker's share under
        input_context: per-replica batches)."""
        raise NotImplementedError

    def validation(self):
        """(callbacks that add the monitored val_* logs, extra keyword arguments of fit) for the fit path."""
        return [], {}

    def make_replica_step(self, model):
        """The multi-worker step (models/training/custom_loop.py): one per-replica batch -> {"loss": ...}."""
        raise NotImplementedError

    def describe(self):
        """What the "training ..." line names (the preset, and a stage)."""
        return self.config.preset


def train(recipe, strategy=None):
    """Runs (or resumes) recipe.config's run until optimizer step total_steps; returns the run folder.

    strategy: a tf.distribute strategy; None builds the one --strategy names.
    A resumed run continues from the saved step with the data order of an
    uninterrupted run; one at or past total_steps ends at once, writing nothing.
    Raises models.training.callbacks.NonFiniteLoss on a non-finite loss,
    run_state.CheckpointSaveError on a failed save (the last good checkpoint stays
    as it was), and data.errors.Stopped after a stop signal (once saved).
    """
    config = recipe.config
    recipe.check()
    strategy, state, changes = start_run(config, strategy, recipe.resumable)
    recipe.read_data()
    steps_per_epoch, total_steps = recipe.plan()
    sync_bn = strategy.num_replicas_in_sync > 1
    new_total = any(name in recipe.total_settings for name, _, _ in changes)

    if config.strategy == "multiworker":
        from models.training.custom_loop import replicated_model, train_with_strategy_run

        model, start_step = replicated_model(strategy, lambda: recipe.build_model(total_steps, sync_bn),
                                             config.out, state)  # built for the new total: nothing to recompute
        if not _begin(recipe, is_chief(strategy), changes, start_step, total_steps):
            return config.out
        return train_with_strategy_run(
            config, strategy, model, state, start_step=start_step, total_steps=total_steps,
            steps_per_epoch=steps_per_epoch, make_replica_step=recipe.make_replica_step,
            dataset_fn=lambda context, skip: recipe.train_dataset(skip, context),
            curve_components=recipe.curve_components)

    from models.training.callbacks import fit_from_step, standard_callbacks
    from models.training.run_state import load_run_model

    start_step = state["steps_done"] if state else 0
    if not _begin(recipe, is_chief(strategy), changes, start_step, total_steps):
        return config.out
    with strategy.scope():
        if state:
            model = load_run_model(config.out, state)
            model.jit_compile = config.jit_compile
            if new_total:
                model.optimizer.learning_rate = recipe.learning_rate(total_steps)
        else:
            model = recipe.build_model(total_steps, sync_bn)
    callbacks, _ = standard_callbacks(config.out, monitor=recipe.monitor, mode=recipe.mode,
                                      keep=config.keep_checkpoints, initial_state=state,
                                      save_every=config.save_every, curve_components=recipe.curve_components)
    validation, fit_kwargs = recipe.validation()
    print(f"training {recipe.describe()}: {total_steps} steps in epochs of {steps_per_epoch} (batch "
          f"{config.batch_size}, {strategy.num_replicas_in_sync} replica(s)); starting at epoch "
          f"{start_step // steps_per_epoch + 1} (step {start_step}); run folder {config.out}", flush=True)
    fit_from_step(model, recipe.train_dataset, start_step=start_step, steps_per_epoch=steps_per_epoch,
                  total_steps=total_steps, callbacks=validation + callbacks, verbose=config.verbose,
                  **fit_kwargs)
    return config.out


def _begin(recipe, chief, changes, start_step, total_steps):
    """Whether there is anything to train; if so, the chief says what a resumed run changes and writes config.json.

    Every worker decides alike (start_step is the chief's); only the chief speaks and writes.
    """
    config = recipe.config
    if start_step >= total_steps:
        if chief:
            print(f"{config.out}: the run is at step {start_step} already, at or past --steps {total_steps}; "
                  "nothing to train, nothing written (pass a larger --steps to train on)", flush=True)
        return False
    if chief:
        for name, before, after in changes:
            note = (f"; the learning-rate schedule is recomputed for {total_steps} steps from step {start_step} on"
                    if name in recipe.total_settings else "")
            print(f"--resume: {flag(name)} {shown(after)} (saved: {shown(before)}){note}", flush=True)
        write_config(config)
    return True

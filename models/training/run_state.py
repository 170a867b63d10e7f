"""A run folder's resumable state, saved as one atomic unit.

One save at optimizer step N writes, in this order:

    ckpt_000000N.keras   the model (weights, optimizer slots, step counter)
    state.json           the manifest: which ckpt_*.keras file is the run's
                         state, the steps and epochs done, the best metric and
                         its checkpoint, and the random-generator states
                         (Dropout, RoI sampling) that .keras files leave out

state.json is replaced (write + rename) last: that rename is the commit. A run
killed anywhere before it resumes from the previous manifest, which still names
files that are all there (a checkpoint file is deleted only after a manifest no
longer names it). After the commit, last.keras, best.keras and epoch_NNN.keras
are refreshed as hard links to the checkpoint files (copies where the file
system has no hard links); they are for people and for evaluate.py, resume
never reads them, and `prepare_run_dir` repairs them when a run stops between
the commit and their refresh.

A failed write (a full disk) removes its partial file and raises
CheckpointSaveError saying which checkpoint is still good.
"""
import json
import os
import shutil

from data.errors import UserError

STATE_FILE = "state.json"
LAST_CHECKPOINT = "last.keras"
BEST_CHECKPOINT = "best.keras"
_PREFIX = "ckpt_"


class RunDirError(UserError, ValueError):
    """A run folder that cannot be used as asked (one line, names the folder and the flag)."""


class CheckpointSaveError(UserError, RuntimeError):
    """A save that failed (disk full, ...); the message names the checkpoint that is still good."""


def read_state(run_dir):
    """The run's manifest ({"epochs_done", "steps_done", "best", "checkpoint", ...}), or None if it has none."""
    path = os.path.join(run_dir, STATE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def checkpoint_path(run_dir, state):
    """The .keras file that holds the state `state` describes (runs saved before manifests: last.keras)."""
    return os.path.join(run_dir, state.get("checkpoint", LAST_CHECKPOINT))


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
    if resume and state and not os.path.exists(checkpoint_path(run_dir, state)):
        raise RunDirError(f"{run_dir}: {STATE_FILE} names {checkpoint_path(run_dir, state)}, which is missing; "
                          "cannot resume")
    os.makedirs(run_dir, exist_ok=True)
    if state and "checkpoint" in state:
        _refresh_links(run_dir, state)  # a run stopped between its commit and the links
    return state if state and os.path.exists(checkpoint_path(run_dir, state)) else None


def load_run_model(run_dir, state):
    """The model of a saved state, as it was when saved (its random generators included)."""
    from models.checkpoints import load_keras_file

    model = load_keras_file(checkpoint_path(run_dir, state), flag="--resume", compile=True)
    restore_seed_states(model, state.get("seed_states"))
    return model


def seed_states(model):
    """The states of every keras.random.SeedGenerator of `model` ([seed, counter] int pairs), in model order."""
    return [v.numpy().tolist() for v in model.variables if v.path.endswith("seed_generator_state")]


def restore_seed_states(model, states):
    """Puts back what `seed_states` returned (load_model draws new seeds: resumed Dropout masks would differ)."""
    variables = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    if len(variables) != len(states or []):
        return
    for variable, value in zip(variables, states):
        variable.assign(value)


def _write_atomically(write, path):
    """write(tmp_path), then rename over `path`; a failed write leaves `path` and no partial file."""
    tmp = path + ".tmp" + os.path.splitext(path)[1]
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_json(data, path):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())

    _write_atomically(write, path)


def _link(source, path):
    """path becomes the same file as source (a hard link; a copy where links are not possible)."""
    def write(tmp):
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    if os.path.exists(path) and os.path.samefile(source, path):
        return
    _write_atomically(write, path)


def _refresh_links(run_dir, state):
    _link(checkpoint_path(run_dir, state), os.path.join(run_dir, LAST_CHECKPOINT))
    if state.get("best_checkpoint"):
        _link(os.path.join(run_dir, state["best_checkpoint"]), os.path.join(run_dir, BEST_CHECKPOINT))


def save_run_state(model, run_dir, *, steps_done, epochs_done, best, monitor, best_improved, previous=None,
                   epoch_file=None, keep=3):
    """Saves `model` as the run's new resumable state (see the module doc); returns the new manifest.

    previous: the manifest this save replaces (None for the first save).
    best_improved: this checkpoint becomes best_checkpoint (best: the monitored value).
    epoch_file: also keep it as this name (epoch_NNN.keras; only the newest `keep` are kept).
    Raises CheckpointSaveError when a write fails; the previous state is then untouched.
    """
    name = f"{_PREFIX}{steps_done:09d}.keras"
    try:
        _write_atomically(model.save, os.path.join(run_dir, name))
        state = {"epochs_done": epochs_done, "steps_done": steps_done, "best": best, "monitor": monitor,
                 "checkpoint": name,
                 "best_checkpoint": name if best_improved else (previous or {}).get("best_checkpoint"),
                 "seed_states": seed_states(model)}
        _write_json(state, os.path.join(run_dir, STATE_FILE))  # the commit
    except OSError as error:
        kept = (f"the previous checkpoint {checkpoint_path(run_dir, previous)} (step {previous['steps_done']}) "
                "is intact and loadable; free space and run again with --resume") if previous else (
                "no checkpoint had been saved yet")
        raise CheckpointSaveError(f"{run_dir}: saving the checkpoint of step {steps_done} failed "
                                  f"({error.strerror or error}); {kept}") from None
    try:
        _refresh_links(run_dir, state)
        if epoch_file:
            _link(os.path.join(run_dir, name), os.path.join(run_dir, epoch_file))
            epochs = sorted(f for f in os.listdir(run_dir) if f.startswith("epoch_") and f.endswith(".keras"))
            for old in epochs[:-keep] if keep > 0 else []:
                os.remove(os.path.join(run_dir, old))
        named = {state["checkpoint"], state["best_checkpoint"]}
        for old in os.listdir(run_dir):
            if old.startswith(_PREFIX) and old.endswith(".keras") and old not in named:
                os.remove(os.path.join(run_dir, old))
    except OSError as error:
        raise CheckpointSaveError(f"{run_dir}: step {steps_done} is saved in {name}, but refreshing "
                                  f"{LAST_CHECKPOINT} failed ({error.strerror or error}); "
                                  "free space and run again with --resume") from None
    return state

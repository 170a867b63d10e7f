"""What every training recipe shares before its own loop starts: flags (with their help) from its
config dataclass, the preset + flags resolution (a resumed run starts from its saved config.json),
the tf.distribute strategy and the start of a run (precision policy, seed, run folder).

A recipe (models/pspnet/recipe.py, models/mask_rcnn/recipe.py) is a config
dataclass whose field names are the CLI flags (each declared with `setting`,
which carries its --help text), a dict of named presets of it, and a
models.training.skeleton.Recipe subclass; train.py only picks the family and
calls these.
"""
import argparse
import dataclasses
import json
import os

from data.errors import UsageError

CONFIG_FILE = "config.json"


def setting(default, help):
    """A config field with its --help text: `crop: tuple = setting((713, 713), "training crop, H,W")`."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class RunSettings:
    """The runtime settings every recipe's config shares (its dataclass inherits them); flags as the fields."""

    strategy: str = setting("none", "none (one device), mirrored (every GPU here) or multiworker (TF_CONFIG)")
    mixed_precision: bool = setting(False, "float16 on a GPU, bfloat16 on a CPU, float32 variables")
    jit_compile: bool = setting(False, "compile the training step with XLA")
    keep_checkpoints: int = setting(2, "how many epoch_NNN.keras files to keep (the newest)")
    save_every: int = setting(0, "also save every N optimizer steps (0: at epoch ends only)")
    deterministic: bool = setting(False, "same seed, same weights (tf.config.experimental.enable_op_determinism)")
    seed: int = setting(0, "random seed of the weights, the augmentation and the data order")
    verbose: int = setting(1, "0: quiet, 1: a progress bar, 2: a line per epoch")


STRATEGIES = ("none", "mirrored", "multiworker")
# What a resumed run may change (honoured, and said in one line each); every other setting makes a different
# model or different data and is refused. A family adds its own (RESUMABLE of its recipe module).
RESUMABLE = ("steps", "save_every", "keep_checkpoints", "verbose", "strategy", "jit_compile", "deterministic",
             "data")
NOT_COMPARED = ("out", "resume")  # the run folder itself; whether to resume


def _parse_tuple(text, cast, pair):
    values = tuple(cast(v) for v in text.replace("x", ",").split(",") if v.strip())
    if pair and len(values) == 1:  # --crop 713 means 713x713
        values = values * 2
    if pair and len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two values like 713,713, got {text!r}")
    return values


def shown(value):
    """A setting's value as a user types it: 713,713 for a tuple, true/false for a switch."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else '""'


def flag(name):
    """The flag of a config field: crop_size -> --crop-size."""
    return "--" + name.replace("_", "-")


def build_parser(config_class, presets, description=None, demo=None):
    """Flags for every field of config_class, each with its help (default None = keep the preset's value)."""
    from data import cli

    full = presets[next(name for name in presets if name != demo)] if presets else config_class()
    parser = cli.ArgumentParser(
        description=description, epilog="A flag not given keeps the preset's value (a resumed run: its saved "
        "one); the defaults shown are those of the preset used with --data.")
    parser.add_argument("--model", choices=["pspnet", "mask_rcnn"], default="pspnet",
                        help="the model family: PSPNet on Cityscapes, or the Mask R-CNN detector on COCO")
    parser.add_argument("--preset", choices=sorted(presets), default=None,
                        help="named recipe (default: the demo when no --data is given, else "
                             f"{full.preset})")
    cli.add_debug_flag(parser)
    for field in dataclasses.fields(config_class):
        if field.name == "preset":
            continue
        value = getattr(full, field.name)
        help_text = f"{field.metadata.get('help', '')} (default: {shown(value)})"
        if isinstance(value, bool):
            parser.add_argument(flag(field.name), action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif isinstance(value, tuple):
            cast, pair = type(value[0]), field.name in ("crop", "scale_range")
            parser.add_argument(flag(field.name), type=lambda t, c=cast, p=pair: _parse_tuple(t, c, p),
                                default=None, help=help_text + "; comma-separated")
        else:
            parser.add_argument(flag(field.name), type=type(value), default=None, help=help_text)
    return parser


def resolve_config(args, config_class, presets, demo, full=None):
    """The preset named by --preset (or the default), with every flag that was given applied.

    Without --preset: the demo when no --data is given, else `full` (default:
    the first preset that is not the demo). With --resume and a run folder that
    holds a config.json, the saved config takes the preset's place: a flag not
    given keeps its saved value (start_run then checks what the given ones change).
    """
    full = full or next(name for name in presets if name != demo)
    name = args.preset or (demo if not args.data else full)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)
             if f.name != "preset" and getattr(args, f.name, None) is not None}
    config = dataclasses.replace(presets[name], **given)
    if not config.out:
        config = dataclasses.replace(config, out=os.path.join("runs", config.preset))
    saved = read_saved_config(config.out, config_class) if config.resume else None
    if saved is not None:
        given.update(out=config.out, resume=True, **({"preset": args.preset} if args.preset else {}))
        config = dataclasses.replace(saved, **given)
    if config.strategy not in STRATEGIES:
        raise UsageError(f"--strategy must be none, mirrored or multiworker, got {config.strategy!r}")
    if not config.data:
        raise UsageError("--data is required: the dataset root (python train.py --help)")
    return config


def parse_config(recipe, argv=None, description=None):
    """argv (default sys.argv[1:]) -> the resolved config of a recipe module (CONFIG, PRESETS, DEMO_PRESET)."""
    args = build_parser(recipe.CONFIG, recipe.PRESETS, description, recipe.DEMO_PRESET).parse_args(argv)
    return resolve_config(args, recipe.CONFIG, recipe.PRESETS, recipe.DEMO_PRESET)


def read_saved_config(run_dir, config_class):
    """The config a run folder's config.json holds, as a config_class (None when there is none).

    Settings the file lacks (a run saved before they existed) keep config_class's defaults.
    """
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(saved) - set(fields))
    if unknown:
        raise UsageError(f"{path}: holds settings this model family does not have ({', '.join(unknown)}); "
                         "is it a run of the other --model?")
    defaults = config_class()
    values = {name: tuple(value) if isinstance(getattr(defaults, name), tuple) else value
              for name, value in saved.items()}
    return dataclasses.replace(defaults, **values)


def resume_changes(saved, config, resumable):
    """[(name, saved value, new value)] of the settings `config` changes against `saved`, a resumed run's config.

    Raises UsageError (one line: the flag, the saved value and the given one) for the first change outside
    `resumable`, the settings that may differ between the segments of one run.
    """
    changes = []
    for field in dataclasses.fields(config):
        before, after = getattr(saved, field.name), getattr(config, field.name)
        if field.name in NOT_COMPARED or before == after:
            continue
        if field.name not in resumable:
            raise UsageError(
                f"{flag(field.name)} {shown(after)}: the run in {config.out} was trained with "
                f"{flag(field.name)} {shown(before)}, and a resumed run keeps it (leave the flag out, or start "
                "a new run with another --out)")
        changes.append((field.name, before, after))
    return changes


def write_config(config):
    """The resolved config as the run folder's config.json (what a resumed run starts from)."""
    with open(os.path.join(config.out, CONFIG_FILE), "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=2)


def make_strategy(name):
    """tf.distribute strategy for --strategy (TF_CONFIG configures multiworker)."""
    import tensorflow as tf

    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy):
    """True on the worker that writes the run folder (task 0, or the only process)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver is None or resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0)


def start_run(config, strategy=None, resumable=()):
    """Common start of a run: strategy, precision policy, seed, run folder; on a resume, what the flags change.

    Returns (strategy, state, changes): state is the saved progress of the run folder
    (models.training.run_state.read_state) when resuming, else None; changes lists
    (setting, saved value, new value) for each setting that differs from the run's
    config.json (resume_changes: a setting outside RESUMABLE + `resumable` is refused
    here, before anything is written). A worker that is not the chief gets (strategy,
    None, []): it writes nothing and takes the chief's state (models/training/custom_loop.py).
    The skeleton writes config.json once it knows there is something to train.
    """
    import keras
    import tensorflow as tf

    from models.training.run_state import prepare_run_dir

    strategy = strategy or make_strategy(config.strategy)
    check_batch_split(config, strategy.num_replicas_in_sync)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()  # same seed, same run: kernels, tf.data order
    if config.mixed_precision:
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
        keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(config.seed)
    if not is_chief(strategy):
        return strategy, None, []
    state = prepare_run_dir(config.out, config.resume)
    saved = read_saved_config(config.out, type(config)) if state else None
    changes = resume_changes(saved, config, RESUMABLE + tuple(resumable)) if saved else []
    return strategy, state, changes


# ----------------------------------------------------------------------------
# Checks of a resolved config (data/cli.py: UsageError, one line naming the flag)
# ----------------------------------------------------------------------------

def check_positive(config, names):
    """Every field in `names` (a number or a tuple of numbers) is > 0."""
    from data import cli

    for name in names:
        value = getattr(config, name)
        for v in value if isinstance(value, tuple) else (value,):
            cli.check_positive(flag(name), v)


def check_not_negative(config, names):
    """Every field in `names` is >= 0 (0 meaning "off" or "all")."""
    from data import cli

    for name in names:
        cli.check_non_negative(flag(name), getattr(config, name))


def check_choice(config, name, choices):
    from data import cli

    cli.check_choice(flag(name), getattr(config, name), choices)


def check_out_outside_data(config):
    """The run folder must not lie inside the dataset (a dataset is read, never written)."""
    from data import cli

    cli.check_output_outside("--out", config.out, "--data", config.data)


def check_batch_split(config, replicas):
    """The global batch splits evenly over the replicas."""
    from data import cli

    cli.check_divisible("--batch-size", config.batch_size, replicas, "replicas")

"""What every training recipe shares before its own loop starts: flags from its
config dataclass, the preset + flags resolution, the tf.distribute strategy and
the start of a run (precision policy, seed, run folder with config.json).

A recipe (models/pspnet/recipe.py, models/mask_rcnn/recipe.py) is a config
dataclass whose field names are the CLI flags, a dict of named presets of it,
and a run function; train.py only picks the family and calls these.
"""
import argparse
import dataclasses
import json
import os


@dataclasses.dataclass
class RunSettings:
    """The runtime settings every recipe's config shares (its dataclass inherits them); flags as the fields."""

    strategy: str = "none"  # none | mirrored | multiworker
    mixed_precision: bool = False
    jit_compile: bool = False
    keep_checkpoints: int = 2
    save_every: int = 0  # also save every N optimizer steps (0: at epoch ends only)
    deterministic: bool = False  # tf.config.experimental.enable_op_determinism: same seed, same weights
    seed: int = 0
    verbose: int = 1

STRATEGIES = ("none", "mirrored", "multiworker")


def _parse_tuple(text, cast, pair):
    values = tuple(cast(v) for v in text.replace("x", ",").split(",") if v.strip())
    if pair and len(values) == 1:  # --crop 713 means 713x713
        values = values * 2
    if pair and len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two values like 713,713, got {text!r}")
    return values


def build_parser(config_class, presets, description=None):
    """Flags for every field of config_class (default None = keep the preset's value)."""
    from data import cli

    parser = cli.ArgumentParser(description=description,
                                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", choices=["pspnet", "mask_rcnn"], default="pspnet")
    parser.add_argument("--preset", choices=sorted(presets), default=None,
                        help="named recipe (default: the demo when no --data is given)")
    cli.add_debug_flag(parser)
    defaults = config_class()
    for field in dataclasses.fields(config_class):
        if field.name == "preset":
            continue
        flag = "--" + field.name.replace("_", "-")
        value = getattr(defaults, field.name)
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(value, tuple):
            cast, pair = type(value[0]), field.name in ("crop", "scale_range")
            parser.add_argument(flag, type=lambda t, c=cast, p=pair: _parse_tuple(t, c, p), default=None,
                                help=f"comma-separated, e.g. {','.join(map(str, value))} (preset value otherwise)")
        else:
            parser.add_argument(flag, type=type(value), default=None)
    return parser


def resolve_config(args, config_class, presets, demo, full=None):
    """The preset named by --preset (or the default), with every flag that was given applied.

    Without --preset: the demo when no --data is given, else `full` (default:
    the first preset that is not the demo).
    """
    full = full or next(name for name in presets if name != demo)
    name = args.preset or (demo if not args.data else full)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)
                 if f.name != "preset" and getattr(args, f.name, None) is not None}
    config = dataclasses.replace(presets[name], **overrides)
    if not config.out:
        config = dataclasses.replace(config, out=os.path.join("runs", config.preset))
    if config.strategy not in STRATEGIES:
        raise SystemExit(f"--strategy must be none, mirrored or multiworker, got {config.strategy!r}")
    if not config.data:
        raise SystemExit("--data is required: the dataset root (python train.py --help)")
    return config


def parse_config(recipe, argv=None, description=None):
    """argv (default sys.argv[1:]) -> the resolved config of a recipe module (CONFIG, PRESETS, DEMO_PRESET)."""
    args = build_parser(recipe.CONFIG, recipe.PRESETS, description).parse_args(argv)
    return resolve_config(args, recipe.CONFIG, recipe.PRESETS, recipe.DEMO_PRESET)


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


def start_run(config, strategy=None):
    """Common start of a run: strategy, precision policy, seed, run folder (with config.json).

    Returns (strategy, state): state is the saved progress of the run folder
    (models.training.run_state.read_state) when resuming, else None (always None on
    a worker that is not the chief: it writes nothing).
    """
    import keras
    import tensorflow as tf

    from models.training.run_state import RunDirError, prepare_run_dir

    strategy = strategy or make_strategy(config.strategy)
    check_batch_split(config, strategy.num_replicas_in_sync)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()  # same seed, same run: kernels, tf.data order
    if config.mixed_precision:
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
        keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(config.seed)
    if not is_chief(strategy):
        return strategy, None  # other workers write nothing and take the chief's state (models/training/custom_loop.py)
    try:
        state = prepare_run_dir(config.out, config.resume)
    except RunDirError as error:
        raise SystemExit(str(error))
    with open(os.path.join(config.out, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=2)
    return strategy, state


# ----------------------------------------------------------------------------
# Checks of a resolved config (data/cli.py: UsageError, one line naming the flag)
# ----------------------------------------------------------------------------

def _flag(name):
    return "--" + name.replace("_", "-")


def check_positive(config, names):
    """Every field in `names` (a number or a tuple of numbers) is > 0."""
    from data import cli

    for name in names:
        value = getattr(config, name)
        for v in value if isinstance(value, tuple) else (value,):
            cli.check_positive(_flag(name), v)


def check_not_negative(config, names):
    """Every field in `names` is >= 0 (0 meaning "off" or "all")."""
    from data import cli

    for name in names:
        cli.check_non_negative(_flag(name), getattr(config, name))


def check_choice(config, name, choices):
    from data import cli

    cli.check_choice(_flag(name), getattr(config, name), choices)


def check_out_outside_data(config):
    """The run folder must not lie inside the dataset (a dataset is read, never written)."""
    from data import cli

    cli.check_output_outside("--out", config.out, "--data", config.data)


def check_batch_split(config, replicas):
    """The global batch splits evenly over the replicas."""
    from data import cli

    cli.check_divisible("--batch-size", config.batch_size, replicas, "replicas")

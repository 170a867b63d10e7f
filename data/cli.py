"""The one parser module every command shares: one-line errors that name the flag, no traceback unless --debug.

A command (train.py, evaluate.py, predict.py, python -m models.convert / data.coco /
data.samples / benchmarks) parses with `ArgumentParser` (argparse, but a parse error is
one line, exit 2, and a flag of another --model is refused), checks its values and
output paths with the functions here (each raises data.errors.UsageError naming the
flag), and runs its work inside `user_errors(debug)`, which turns the errors a user can
fix (data.errors.UserError, and an OSError naming its path) into a one-line message on
stderr and exit status 1:

    parser = cli.ArgumentParser(description=...)
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    with cli.user_errors(args.debug):
        cli.check_positive("--batch-size", args.batch_size)
        cli.check_output_dir("--out", args.out)
        ...

Library code raises UserError subclasses, never SystemExit. A command also calls
`set_tensorflow_environment()` before it imports TensorFlow (this module imports none).
"""
import argparse
import contextlib
import os
import sys

from data.errors import UsageError, UserError  # noqa: F401  (the CLIs' error family)


def set_tensorflow_environment(environ=os.environ, cpu_flags=None):
    """Set the CLIs' TensorFlow defaults in `environ`; call before importing TensorFlow (it reads them once).

    Values already in `environ` win. Quiet C++ logging, and oneDNN CPU kernels on where the CPU has
    AVX-512, elsewhere TensorFlow's own default (off on AVX2-only CPUs). Measured (BENCHMARKS.md section 3):
    - AVX-512 with VNNI, where TensorFlow enables oneDNN itself: PSPNet-50 training 1.5x faster with it.
    - AVX-512 without VNNI (TensorFlow leaves it off): training 1.1-1.3x faster, whole-image inference slower.
    - AVX2 only: training 1.1x slower, whole-image inference 7x slower (sliding windows 1.25x faster),
      Mask R-CNN detect() 3x slower, and the detector's training step 0.2-0.5 GiB larger.

    cpu_flags: the CPU's feature flags (default: /proc/cpuinfo's; unknown elsewhere, which leaves
    TensorFlow's own choice).
    """
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if cpu_flags is None:
        cpu_flags = cpu_feature_flags()
    if "avx512f" in cpu_flags:
        environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def cpu_feature_flags():
    """The feature flags of the first CPU in /proc/cpuinfo (Linux), or an empty set."""
    return set((cpuinfo_field("flags") or "").split())


def cpuinfo_field(name):
    """The value of `name` ("model name", "flags") for the first CPU in /proc/cpuinfo, or None (not Linux,
    or no such field, as "flags" on ARM)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line parse errors ("prog: error: ...", exit 2) instead of usage + error, and flags
    that only one model family uses.

    add_argument(..., models=("pspnet",)) marks a flag as used by those values of --model only;
    parse_args then refuses it, one line naming it, when the user gave it with another --model
    (given on the command line, whatever its value: a default never counts). The full usage
    stays one `--help` away.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_flags = {}  # flag (its longest name) -> the --model values that use it

    def add_argument(self, *names, models=None, **kwargs):
        if models and kwargs.get("help"):
            kwargs["help"] += f" [--model {' / '.join(models)} only]"
        action = super().add_argument(*names, **kwargs)
        if models:
            self.model_flags[max(action.option_strings, key=len)] = tuple(models)
        return action

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        if self.model_flags:
            for flag in given_flags(self, args):
                models = self.model_flags.get(flag, (parsed.model,))
                if parsed.model not in models:
                    self.error(f"argument {flag}: not used by --model {parsed.model}, only by --model "
                               f"{' / '.join(models)}; leave it out")
        return parsed

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def given_flags(parser, argv=None):
    """The flags the user wrote in argv (default sys.argv[1:]), each by its longest name, in the parser's order.

    Whatever the value, and a default never counts: argv is parsed again with every default
    suppressed, so what lands in the namespace is what the command line set (abbreviations
    and --flag=value included). (argparse has no public list of its actions: parser._actions.)
    """
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        given, _ = argparse.ArgumentParser.parse_known_args(parser, argv)
    finally:
        for action, default in saved:
            action.default = default
    return [max(action.option_strings, key=len) for action, _ in saved
            if action.option_strings and action.dest in vars(given)]


def add_debug_flag(parser):
    parser.add_argument("--debug", action="store_true",
                        help="show the full Python traceback of an input error (for bug reports)")


def add_resize_flags(parser, models=None):
    """--short-side / --long-side: how Mask R-CNN resizes images (default: the run's config.json, else 800 / 1333)."""
    parser.add_argument("--short-side", type=int, default=None, models=models,
                        help="resize each image so that its short side has this many pixels "
                             "(default: the run's config.json, else 800)")
    parser.add_argument("--long-side", type=int, default=None, models=models,
                        help="but no longer long side than this many pixels (default: the run's config.json, "
                             "else 1333)")


def add_skip_bad_flag(parser, models=None):
    parser.add_argument("--skip-bad", action="store_true", models=models,
                        help="skip unreadable images (and Cityscapes examples with a bad label) with a warning "
                             "each and a count at the end, instead of stopping at the first")


def add_precision_flag(parser):
    """--precision float32|bfloat16 (evaluate.py, predict.py): what models.precision.with_precision applies to the
    loaded model."""
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                        help="the arithmetic of the model: float32 (default), or bfloat16 (Keras mixed_bfloat16: "
                             "float32 weights, bfloat16 layers; boxes, logits and scores stay float32), faster "
                             "on CPUs with AVX512_BF16 or AMX, emulated and slower on others; bfloat16 changes "
                             "the results slightly")


def parse_pair(text, cast=int, flag=None):
    """"713" -> (713, 713); "512,1024" or "512x1024" -> (512, 1024): a size H,W (or any pair) given as one number
    or two. An argparse `type` (flag=None: argparse names the flag) or a check (raises UsageError naming flag)."""
    try:
        values = tuple(cast(v) for v in str(text).lower().replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) == 1:
        values *= 2
    if len(values) != 2:
        message = f"takes one number or two like 713 or 512,1024 (H,W), got {text!r}"
        if flag is None:
            raise argparse.ArgumentTypeError(message)
        raise UsageError(f"{flag} {message}")
    return values


def add_segmentation_flags(parser, models=("pspnet",)):
    """PSPNet's inference flags, the same in evaluate.py and predict.py: the test protocol and its settings
    (models/pspnet/protocol_settings.py says which flags each protocol reads)."""
    parser.add_argument("--protocol", choices=["ours", "semseg", "mmseg"], default="ours", models=models,
                        help="ours: this project's inference; semseg: hszhao/semseg's tool/test.py; mmseg: "
                             "mmsegmentation's test with the model's own settings (default: ours)")
    parser.add_argument("--sliding", action="store_true", models=models,
                        help="sliding-window inference (default: whole image; mmseg: the model's own mode)")
    parser.add_argument("--crop", type=parse_pair, default=None, models=models,
                        help="sliding window size: 713 or H,W like 713,713 (default: 713; mmseg: the model's own)")
    parser.add_argument("--stride", type=parse_pair, default=None, models=models,
                        help="sliding window step H,W (default: ceil(2/3 of --crop); mmseg: the model's own)")
    parser.add_argument("--flip", action="store_true", models=models,
                        help="average with the horizontally flipped image (semseg: always)")
    parser.add_argument("--scales", default="1", models=models,
                        help="multi-scale factors, e.g. 0.5,0.75,1,1.25 (mmseg: its img_ratios)")
    parser.add_argument("--base-size", type=int, default=None, models=models,
                        help="--protocol semseg: the long side at scale 1 (default: 2048)")
    parser.add_argument("--test-scale", type=parse_pair, default=None, models=models,
                        help="--protocol mmseg: rescale each image to fit LONG,SHORT like 2048,1024 "
                             "(default: the model's own)")


def is_user_error(error):
    """True for an error whose one line is enough for a user: a UserError, or an OSError naming its path."""
    return isinstance(error, UserError) or (isinstance(error, OSError) and bool(error.filename))


@contextlib.contextmanager
def user_errors(debug=False):
    """Inside: a user's error (data.errors.UserError, or an OSError naming its path) becomes
    SystemExit: its one-line message on stderr and exit status 1, or the error's own exit_status
    (data.errors.Stopped: 128 + the signal, also under debug: a stop is not a bug). With debug an
    error of status 1 propagates with its traceback; anything else (a bug) always does."""
    try:
        yield
    except (UserError, OSError) as error:
        status = getattr(error, "exit_status", 1)
        if not is_user_error(error) or (debug and status == 1):
            raise
        if status != 1:
            print(_one_line(error), file=sys.stderr, flush=True)
            raise SystemExit(status) from None
        raise SystemExit(_one_line(error)) from None


def _one_line(error):
    if isinstance(error, OSError) and not isinstance(error, UserError):
        reason = "no such file or folder" if isinstance(error, FileNotFoundError) else \
            (error.strerror or type(error).__name__).lower()
        return f"{error.filename}: {reason}"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _first_existing(path):
    """The path itself or its nearest ancestor that exists (a folder or a file)."""
    path = os.path.abspath(path)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _check_folder_writable(flag, path, folder):
    """UsageError naming flag and path unless `folder` is a writable folder or the folders it needs can be made."""
    found = _first_existing(folder)
    if not os.path.isdir(found):
        where = "is a file" if found == os.path.abspath(path) else f"lies under the file {found}"
        raise UsageError(f"{flag} {path}: {where}, not a folder; pass another {flag}")
    if not os.access(found, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: no permission to write in {found}; pass another {flag}")


def check_output_dir(flag, path):
    """The output folder `path` can be written: a writable folder, or one that can be made where it is.

    Creates nothing (a later error leaves no empty folder behind); raises UsageError, one line naming
    flag and path: a file where a folder must be, or no permission to write. Returns path. A remote
    path (gs://...) passes unchecked. Every command checks its output path with this or
    check_output_file before it loads a model or reads a dataset (train.py: the run folder, --out).
    """
    if "://" not in str(path):
        _check_folder_writable(flag, path, path)
    return path


def check_output_file(flag, path):
    """The output file `path` can be written: no folder of that name, its folder as check_output_dir wants,
    the file itself writable if it exists. Creates nothing; raises UsageError naming flag and path. Returns path."""
    if "://" in str(path):
        return path
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a folder; give a file name")
    _check_folder_writable(flag, path, os.path.dirname(os.path.abspath(path)))
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: no permission to write it; pass another {flag}")
    return path


def check_positive(flag, value):
    """value > 0 (batch size, crop, steps, ...); returns it."""
    if value is None or value <= 0:
        raise UsageError(f"{flag} must be positive, got {value}")
    return value


def check_non_negative(flag, value, meaning_of_zero=""):
    """value >= 0 (counts where 0 means "all" or "none"); returns it."""
    if value is None or value < 0:
        raise UsageError(f"{flag} must be 0 or more{meaning_of_zero}, got {value}")
    return value


def check_fraction(flag, value):
    """0 <= value <= 1 (opacities, probabilities); returns it."""
    if value is None or not 0.0 <= value <= 1.0:
        raise UsageError(f"{flag} must lie in [0, 1], got {value}")
    return value


def parse_scales(flag, text):
    """"0.5,0.75,1" -> (0.5, 0.75, 1.0), every factor positive."""
    try:
        scales = tuple(float(s) for s in str(text).split(","))
    except ValueError:
        raise UsageError(f"{flag} takes positive numbers separated by commas, like 0.5,0.75,1.0, "
                         f"got {text!r}") from None
    if not all(s > 0 for s in scales):  # also refuses nan
        raise UsageError(f"{flag} factors must be positive, got {text!r}")
    return scales


def check_divisible(flag, value, divisor, what):
    """value % divisor == 0 (a global batch over replicas); returns value // divisor."""
    if value % divisor:
        raise UsageError(f"{flag} {value} does not split evenly over {divisor} {what}; pass a multiple of {divisor}")
    return value // divisor


def check_choice(flag, value, choices):
    """value in choices (a model, backbone, preset name given as free text); returns it."""
    if value not in choices:
        raise UsageError(f"{flag} {value!r} is not one of {', '.join(map(str, choices))}")
    return value


def _real(path):
    path = str(path)
    return path.rstrip("/") if "://" in path else os.path.realpath(path)


def check_output_outside(out_flag, out, data_flag, data):
    """The output folder must not lie inside (or be) the dataset folder: writing predictions there
    would mix them with the dataset's own files (and a later reader would list them as data)."""
    out_path, data_path = _real(out), _real(data)
    if out_path == data_path or out_path.startswith(data_path.rstrip("/") + "/"):
        raise UsageError(f"{out_flag} {out}: inside the dataset folder {data_flag} {data}; "
                         "write results to a folder outside it")
    return out


def warn(message):
    """A one-line warning on stderr (skipped files, converted images)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


"""Command-line checks shared by the CLIs: one-line errors that name the flag, no traceback unless --debug.

A CLI parses with `ArgumentParser` (argparse, but a parse error is one line), checks its
values with the functions here (each raises UsageError naming the flag), and runs its
work inside `user_errors(debug)`, which turns the errors a user can fix (USER_ERRORS) into
a one-line message on stderr and exit status 1:

    parser = cli.ArgumentParser(description=...)
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    with cli.user_errors(args.debug):
        cli.check_positive("--crop", args.crop)
        ...

A CLI also calls `set_tensorflow_environment()` before it imports TensorFlow (this module imports none).
"""
import argparse
import contextlib
import os
import sys

from data.errors import UsageError, UserError  # noqa: F401  (the CLIs' error family)
from data.images import BadImageError


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
    """argparse with one-line parse errors ("prog: error: ...", exit 2) instead of usage + error.

    The full usage stays one `--help` away.
    """

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_debug_flag(parser):
    parser.add_argument("--debug", action="store_true",
                        help="show the full Python traceback of an input error (for bug reports)")


def add_resize_flags(parser):
    """--short-side / --long-side: how Mask R-CNN resizes images (default: the run's config.json, else 800 / 1333)."""
    parser.add_argument("--short-side", type=int, default=None, help="Mask R-CNN: resize (default: the run's config)")
    parser.add_argument("--long-side", type=int, default=None, help="Mask R-CNN: resize limit (default: the run's)")


def add_skip_bad_flag(parser):
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable images (and Cityscapes examples with a bad label) with a warning "
                             "each and a count at the end, instead of stopping at the first")


def _user_errors():
    """The exception types whose message is enough for a user (each names its file or flag).

    The errors of other modules (CheckpointError, the COCO reader's CocoInputError and
    RecordsMismatch, the converters' CheckpointMismatch) count once their module is imported
    (they cannot have been raised before), so a flag error does not import Keras just to be reported.
    """
    extra = ()
    for module, name in (("models.checkpoints", "CheckpointError"), ("data.coco.annotations", "CocoInputError"),
                         ("data.coco.convert", "RecordsMismatch"), ("models.convert.torch_reader", "CheckpointMismatch")):
        if module in sys.modules:
            extra += (getattr(sys.modules[module], name),)
    return (UserError, BadImageError, FileNotFoundError) + extra


@contextlib.contextmanager
def user_errors(debug=False):
    """Inside: a user's error (any data.errors.UserError, FileNotFoundError) becomes SystemExit: its
    one-line message on stderr and exit status 1, or the error's own exit_status (data.errors.Stopped:
    128 + the signal). With debug an error of status 1 propagates with its traceback."""
    try:
        yield
    except _user_errors() as error:
        status = getattr(error, "exit_status", 1)
        if debug and status == 1:
            raise
        if status != 1:
            print(_one_line(error), file=sys.stderr, flush=True)
            raise SystemExit(status) from None
        raise SystemExit(_one_line(error)) from None


def _one_line(error):
    text = str(error).strip()
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"{error.filename}: no such file or folder"
    return text.splitlines()[0] if text else type(error).__name__


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


def read_image_or_skip(path, skip_bad):
    """data.images.read_image(path): uint8 [H, W, 3] RGB; for a bad file with skip_bad (--skip-bad), None and a warning.

    Without skip_bad a bad file raises data.images.BadImageError (one line naming it).
    """
    from data import images

    try:
        return images.read_image(path)
    except BadImageError as error:
        if not skip_bad:
            raise
        warn(f"skipped: {error}")
        return None

"""Convert a published PyTorch checkpoint into a `.keras` model that every CLI here loads.

    python -m models.convert SOURCE IN.pth OUT.keras [--overwrite] [--no-check-hash] [--quiet]

SOURCE names the project the checkpoint comes from (models.convert.CONVERTERS). torch is
needed only to read IN (torch.load(weights_only=True)); OUT loads with
keras.saving.load_model(OUT, safe_mode=True), without torch.
"""
import os

from data import cli
from data.errors import UsageError
from data.progress import Progress, add_quiet_flag
from models.convert import CONVERTERS, convert_checkpoint

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser():
    parser = cli.ArgumentParser(prog="python -m models.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", choices=sorted(CONVERTERS), help="where the checkpoint comes from")
    parser.add_argument("checkpoint", help="the PyTorch checkpoint (.pth) as its project publishes it")
    parser.add_argument("out", help="the .keras file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--no-check-hash", dest="check_hash", action="store_false",
                        help="skip checking IN's SHA-256 against the hash prefix in its published name "
                             "(e.g. -bf2d0c1e.pth), as for a file renamed by hand")
    add_quiet_flag(parser)
    cli.add_debug_flag(parser)
    return parser


def check_paths(checkpoint, out, overwrite=False):
    """IN must be a file, OUT a writable .keras path that is free (or overwrite); raises UsageError naming it."""
    if not os.path.isfile(checkpoint):
        raise UsageError(f"{checkpoint}: no such file (a PyTorch checkpoint, .pth)")
    if not out.endswith(".keras"):
        raise UsageError(f"{out}: the output must be a .keras file")
    if os.path.exists(out) and not overwrite:
        raise UsageError(f"{out}: exists already; pass --overwrite or another OUT")
    cli.check_output_file("OUT", out)


def convert_file(source, checkpoint, out, *, check_hash=True, progress=None):
    """Converts IN into OUT (with its provenance); returns the keras.Model. Raises CheckpointMismatch naming
    IN for a checkpoint that does not fit SOURCE or whose SHA-256 differs from the one its name carries."""
    from models.convert.torch_reader import CheckpointMismatch

    try:
        return convert_checkpoint(source, checkpoint, out, check_hash=check_hash, progress=progress)
    except CheckpointMismatch as error:
        message = str(error)
        if not message.startswith(str(checkpoint)):
            raise CheckpointMismatch(f"{checkpoint}: {message}") from error
        raise


def main(argv=None):
    """Runs the conversion; returns the converted keras.Model. User errors exit with one line (status 1)."""
    args = build_parser().parse_args(argv)
    with cli.user_errors(args.debug):
        check_paths(args.checkpoint, args.out, args.overwrite)
        model = convert_file(args.source, args.checkpoint, args.out, check_hash=args.check_hash,
                             progress=Progress(quiet=args.quiet))
    print(f"wrote {args.out} ({model.name}, {model.count_params():,} parameters)")
    return model

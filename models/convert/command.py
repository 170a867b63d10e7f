"""Convert a published PyTorch checkpoint into a `.keras` model that every CLI here loads.

    python -m models.convert SOURCE IN.pth OUT.keras [--overwrite]

SOURCE names the project the checkpoint comes from (models.convert.CONVERTERS). torch is
needed only to read IN (torch.load(weights_only=True)); OUT loads with
keras.saving.load_model(OUT, safe_mode=True), without torch.
"""
import argparse
import os

from data.progress import Progress, add_quiet_flag
from models.convert import CONVERTERS, convert

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", choices=sorted(CONVERTERS), help="where the checkpoint comes from")
    parser.add_argument("checkpoint", help="the PyTorch checkpoint (.pth) as its project publishes it")
    parser.add_argument("out", help="the .keras file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_quiet_flag(parser)
    return parser


def main(argv=None):
    """Runs the conversion; returns the converted keras.Model. User errors exit with one line."""
    args = build_parser().parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f"{args.checkpoint}: no such file (a PyTorch checkpoint, .pth)")
    if not args.out.endswith(".keras"):
        raise SystemExit(f"{args.out}: the output must be a .keras file")
    if os.path.exists(args.out) and not args.overwrite:
        raise SystemExit(f"{args.out}: exists already; pass --overwrite or another OUT")

    from models.convert.torch_reader import CheckpointMismatch

    try:
        model = convert(args.source, args.checkpoint, progress=Progress(quiet=args.quiet))
    except CheckpointMismatch as error:
        message = str(error)
        raise SystemExit(message if message.startswith(str(args.checkpoint)) else f"{args.checkpoint}: {message}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    model.save(args.out)
    print(f"wrote {args.out} ({model.name}, {model.count_params():,} parameters)")
    return model


"""Convert a published PyTorch checkpoint into a `.keras` model that every CLI here loads.

    python -m models.convert SOURCE IN.pth OUT.keras [--overwrite]

SOURCE names the project the checkpoint comes from (see CONVERTERS); the
converters live beside their models (models/<family>/convert_*.py). torch is
needed only to read IN (torch.load(weights_only=True)); OUT loads with
keras.saving.load_model(OUT, safe_mode=True), without torch.
"""
import argparse
import importlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# SOURCE -> (module, function). The function takes the checkpoint's path and returns the
# keras.Model holding its weights, or raises models.torch_weights.CheckpointMismatch.
# Modules are imported only for the SOURCE asked for.
CONVERTERS = {
    "semseg-pspnet": ("models.pspnet.convert_torch", "convert_semseg"),
    "mmseg-pspnet": ("models.pspnet.convert_torch", "convert_mmseg"),
    "torchvision-maskrcnn": ("models.mask_rcnn.convert_torchvision", "convert_maskrcnn"),
    "torchvision-maskrcnn-v2": ("models.mask_rcnn.convert_torchvision", "convert_maskrcnn_v2"),
    "torchvision-resnet50": ("models.mask_rcnn.convert_torchvision", "convert_resnet50"),
}


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", choices=sorted(CONVERTERS), help="where the checkpoint comes from")
    parser.add_argument("checkpoint", help="the PyTorch checkpoint (.pth) as its project publishes it")
    parser.add_argument("out", help="the .keras file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
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

    from models.torch_weights import CheckpointMismatch

    module_name, function_name = CONVERTERS[args.source]
    convert = getattr(importlib.import_module(module_name), function_name)
    try:
        model = convert(args.checkpoint)
    except CheckpointMismatch as error:
        message = str(error)
        raise SystemExit(message if message.startswith(str(args.checkpoint)) else f"{args.checkpoint}: {message}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    model.save(args.out)
    print(f"wrote {args.out} ({model.name}, {model.count_params():,} parameters)")
    return model


if __name__ == "__main__":
    main()
    sys.exit(0)

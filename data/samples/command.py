"""Write small built-in datasets in the official on-disk layouts.

    python -m data.samples cityscapes OUT_DIR [--num-train N] [--num-val N] [--size HxW] [--seed S]
    python -m data.samples coco OUT_DIR [--num-train N] [--num-val N] [--size HxW] [--seed S]

The demo and the tests read these samples with the same readers that read the
real datasets, so the layout (folders, file names, PNG/JSON encodings) is
exactly the official one; only the scenes are synthetic.
"""
import argparse

from data import cli

# Per dataset: (default train images, default val images, default HxW).
_DEFAULTS = {
    "cityscapes": (24, 8, (256, 512)),
    "coco": (48, 16, (256, 320)),
}


def _parse_size(text):
    height, width = cli.parse_pair(text)
    if height < 32 or width < 32:
        raise argparse.ArgumentTypeError(f"must be at least 32x32, got {text!r}")
    return height, width


def build_parser():
    parser = cli.ArgumentParser(prog="python -m data.samples", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(_DEFAULTS), help="which official layout to write")
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="folder to write into (created; existing sample files are refused)")
    parser.add_argument("--num-train", type=int, default=None,
                        help="train images (default: 24 for cityscapes, 48 for coco)")
    parser.add_argument("--num-val", type=int, default=None, help="val images (default: 8 for cityscapes, 16 for coco)")
    parser.add_argument("--size", type=_parse_size, default=None,
                        help="image size HxW like 256x512, or one number for a square (default: 256x512 for "
                             "cityscapes, 256x320 for coco)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic scenes")
    cli.add_debug_flag(parser)
    return parser


def main(argv=None):
    """Writes the sample argv (default sys.argv[1:]) asks for; returns 0. User errors exit with one line."""
    args = build_parser().parse_args(argv)
    num_train, num_val, size = _DEFAULTS[args.dataset]
    num_train = num_train if args.num_train is None else args.num_train
    num_val = num_val if args.num_val is None else args.num_val
    size = size if args.size is None else args.size

    with cli.user_errors(args.debug):
        cli.check_positive("--num-train", num_train)
        cli.check_positive("--num-val", num_val)
        cli.check_output_dir("OUT_DIR", args.out_dir)
        if args.dataset == "cityscapes":
            from data.samples.cityscapes import write_cityscapes_sample as write
        else:
            from data.samples.coco import write_coco_sample as write
        write(args.out_dir, num_train=num_train, num_val=num_val, size=size, seed=args.seed)  # never over a dataset
    print(f"wrote {args.dataset} sample ({num_train} train, {num_val} val, {size[0]}x{size[1]}) to {args.out_dir}")
    return 0

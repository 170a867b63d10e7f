"""python -m data.coco prepare: convert a COCO-format dataset into TFRecord shards, once (data.coco.convert)."""
import os

from data import cli
from data.progress import Progress, add_quiet_flag


def build_parser():
    """python -m data.coco COMMAND ...: one command today, prepare."""
    parser = cli.ArgumentParser(prog="python -m data.coco", description=__doc__.split(":", 1)[1].strip())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help="prepare (python -m data.coco prepare --help)")
    prepare = commands.add_parser("prepare", help="convert a COCO-format dataset into TFRecord shards, once",
                                  description="Convert a COCO-format dataset into TFRecord shards, once.")
    prepare.add_argument("data_dir", nargs="?", metavar="DATA_DIR",
                         help="official layout: annotations/instances_SPLIT2017.json, SPLIT2017/")
    prepare.add_argument("--split", nargs="+", default=["train", "val"],
                         help="the splits of DATA_DIR to convert (default: train val)")
    prepare.add_argument("--annotations", help="any COCO-format annotation file (with --images and --out)")
    prepare.add_argument("--images", help="the folder its file_name entries are relative to")
    prepare.add_argument("--out", help="with DATA_DIR: the folder for SPLIT2017_maskS/ (default DATA_DIR/records); "
                                       "with --annotations: the records folder")
    prepare.add_argument("--mask-size", type=int, default=56, help="side of the stored instance masks, in pixels")
    prepare.add_argument("--images-per-shard", type=int, default=1024, help="images in each TFRecord shard")
    prepare.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    prepare.add_argument("--skip-bad", action="store_true", help="skip bad images/annotations with a warning")
    add_quiet_flag(prepare)
    cli.add_debug_flag(prepare)
    return parser, prepare


def main(argv=None):
    """python -m data.coco prepare ARGV (argv: what follows "prepare"); returns 0. User errors exit with one line."""
    return run(["prepare"] + list(argv) if argv is not None else None)


def run(argv=None):
    """python -m data.coco ARGV (default sys.argv[1:], the command first); returns 0."""
    parser, prepare = build_parser()
    args = parser.parse_args(argv)
    if args.annotations:
        if not (args.images and args.out):
            prepare.error("--annotations needs --images and --out")
    elif not args.data_dir:
        prepare.error("give DATA_DIR, or --annotations FILE --images DIR --out DIR")
    with cli.user_errors(args.debug):
        cli.check_positive("--mask-size", args.mask_size)
        cli.check_positive("--images-per-shard", args.images_per_shard)
        if args.workers is not None:
            cli.check_positive("--workers", args.workers)
        from data.coco.convert import convert
        from data.coco.records import default_records_dir

        if args.annotations:
            jobs = [(args.annotations, args.images, args.out)]
        else:
            jobs = [(os.path.join(args.data_dir, "annotations", f"instances_{split}2017.json"),
                     os.path.join(args.data_dir, f"{split}2017"),
                     default_records_dir(args.data_dir, split, args.mask_size, parent=args.out))
                    for split in args.split]
        if args.out:
            cli.check_output_dir("--out", args.out)
        for ann_path, image_dir, out_dir in jobs:
            convert(ann_path, image_dir, out_dir, mask_size=args.mask_size, images_per_shard=args.images_per_shard,
                    num_workers=args.workers, skip_bad=args.skip_bad, progress=Progress(quiet=args.quiet))
    return 0

"""python -m data.coco prepare: convert a COCO-format dataset into TFRecord shards, once (data.coco.convert)."""
import argparse
import os

from data.coco.annotations import CocoInputError
from data.coco.convert import RecordsMismatch, convert
from data.coco.records import default_records_dir
from data.progress import Progress, add_quiet_flag


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data.coco prepare",
                                     description="Convert a COCO-format dataset into TFRecord shards, once.")
    parser.add_argument("data_dir", nargs="?", help="official layout: annotations/instances_SPLIT2017.json, SPLIT2017/")
    parser.add_argument("--split", nargs="+", default=["train", "val"])
    parser.add_argument("--annotations", help="any COCO-format annotation file (with --images and --out)")
    parser.add_argument("--images", help="the folder its file_name entries are relative to")
    parser.add_argument("--out", help="with DATA_DIR: the folder for SPLIT2017_maskS/ (default DATA_DIR/records); "
                                      "with --annotations: the records folder")
    parser.add_argument("--mask-size", type=int, default=56)
    parser.add_argument("--images-per-shard", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad images/annotations with a warning")
    add_quiet_flag(parser)
    args = parser.parse_args(argv)
    if args.mask_size < 1 or args.images_per_shard < 1 or (args.workers is not None and args.workers < 1):
        parser.error("--mask-size, --images-per-shard and --workers must be positive")
    if args.annotations:
        if not (args.images and args.out):
            parser.error("--annotations needs --images and --out")
        jobs = [(args.annotations, args.images, args.out)]
    elif args.data_dir:
        jobs = [(os.path.join(args.data_dir, "annotations", f"instances_{split}2017.json"),
                 os.path.join(args.data_dir, f"{split}2017"),
                 default_records_dir(args.data_dir, split, args.mask_size, parent=args.out)) for split in args.split]
    else:
        parser.error("give DATA_DIR, or --annotations FILE --images DIR --out DIR")
    try:
        for ann_path, image_dir, out_dir in jobs:
            convert(ann_path, image_dir, out_dir, mask_size=args.mask_size, images_per_shard=args.images_per_shard,
                    num_workers=args.workers, skip_bad=args.skip_bad, progress=Progress(quiet=args.quiet))
    except (CocoInputError, RecordsMismatch) as error:
        parser.exit(1, f"{parser.prog}: {error}\n")
    return 0

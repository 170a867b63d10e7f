"""python -m data.coco prepare ...: convert a COCO-format dataset into TFRecord shards (data.coco.convert)."""
import sys

from data.coco.command import main

if __name__ == "__main__":
    if sys.argv[1:2] != ["prepare"]:
        sys.exit("usage: python -m data.coco prepare DATA_DIR [--split train val] [--out DIR] [--skip-bad] "
                 "(python -m data.coco prepare --help for more)")
    sys.exit(main(sys.argv[2:]))

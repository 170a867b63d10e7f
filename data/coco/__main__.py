"""python -m data.coco prepare ...: convert a COCO-format dataset into TFRecord shards (data.coco.command)."""
import sys

from data.coco.command import run

if __name__ == "__main__":
    sys.exit(run())

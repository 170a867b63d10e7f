"""python -m data.samples cityscapes|coco OUT_DIR ...: write a built-in sample dataset (data.samples.command)."""
import sys

from data.samples.command import main

if __name__ == "__main__":
    sys.exit(main())

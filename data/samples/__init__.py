"""Small built-in datasets in the official on-disk layouts (python -m data.samples cityscapes|coco OUT_DIR).

    cityscapes  synthetic street scenes as leftImg8bit/ + gtFine/ PNGs
    coco        synthetic shapes as instances_*.json (polygons, crowd RLE) + JPEGs
    command     the command line (main)
The demo and the tests read these samples with the readers that read the real
datasets; only the scenes are synthetic.
"""
from data.samples.command import main

__all__ = ["main"]

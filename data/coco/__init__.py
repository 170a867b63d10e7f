"""COCO-format instance data: checked reading, compact masks, TFRecord shards, the tf.data pipeline, results.

Modules, lowest first (each imports only those above it):
    annotations  the JSON read and checked: one line naming the file and id for every bad entry
    masks        polygons / RLE -> masks, and the compact per-box crops the pipeline carries
    instances    Categories, one image's instances, and the record format of the shards
    convert      COCO once into TFRecord shards, in parallel and resumable (python -m data.coco prepare)
    records      the shards' shardable, seeded tf.data reader
    pipeline     read_coco (records, or in memory) and make_dataset (the batches the detector trains on)
    results      detections -> COCO results JSON, and COCOeval
The names below are the package's API, so that callers write `coco.make_dataset(...)`.
"""
from data.coco.annotations import CocoFileNotFound, CocoInputError, load_instances
from data.coco.instances import Categories, empty_drop_counts, image_instances, split_paths
from data.coco.masks import annotation_mask, crop_mask
from data.coco.pipeline import CocoSplit, make_dataset, prepare_example, read_coco, resized_size
from data.coco.results import SEGM_METRICS, bbox_results, evaluate_results, evaluate_segm, segm_results, write_results

__all__ = [
    "SEGM_METRICS", "Categories", "CocoFileNotFound", "CocoInputError", "CocoSplit", "annotation_mask",
    "bbox_results", "crop_mask", "empty_drop_counts", "evaluate_results", "evaluate_segm", "image_instances",
    "load_instances", "make_dataset", "prepare_example", "read_coco", "resized_size", "segm_results",
    "split_paths", "write_results",
]

"""Cityscapes (fine annotations): the label table, checked file listing, readers and tf.data pipelines.

Modules, lowest first:
    labels     labelIds <-> trainIds, class names and colours
    files      the official folder layout listed, every file checked before decoding
    augment    paired image/label geometry (resize, flip, pad, crop, rotation, blur)
    readers    read_folder (the official folders) and read_tfds (TFDS), giving the same elements:
                   {"image": uint8 [H, W, 3] RGB, "label": uint8 [H, W] labelIds, "id": string}
    pipelines  train_pipeline (the PSPNet recipe's augmentation) and eval_pipeline (full images)
The names below are the package's API (`cityscapes.read_folder(...)`).
"""
from data.cityscapes.files import Example, explain_decode_error, find_examples
from data.cityscapes.labels import (
    CLASS_COLORS, CLASS_NAMES, IGNORE_LABEL, LABELS, MAX_LABEL_ID, NUM_CLASSES, Label, to_label_ids, to_train_ids,
)
from data.cityscapes.pipelines import eval_pipeline, train_pipeline
from data.cityscapes.readers import read_folder, read_tfds

__all__ = [
    "CLASS_COLORS", "CLASS_NAMES", "IGNORE_LABEL", "LABELS", "MAX_LABEL_ID", "NUM_CLASSES", "Example", "Label",
    "eval_pipeline", "explain_decode_error", "find_examples", "read_folder", "read_tfds", "to_label_ids",
    "to_train_ids", "train_pipeline",
]

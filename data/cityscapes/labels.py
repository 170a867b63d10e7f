"""The Cityscapes label table: labelIds (on disk, read by the official evaluator) <-> trainIds (what models learn).

trainIds 0..18 are the 19 benchmark classes, 255 is ignore; to_train_ids and
to_label_ids work on NumPy arrays and tensors alike.
"""
import collections

import numpy as np
import tensorflow as tf


IGNORE_LABEL = 255


# The official table (cityscapesscripts/helpers/labels.py): name, labelId,
# trainId (255 = not trained on, -1 = not in the benchmark), RGB colour.
Label = collections.namedtuple("Label", ["name", "id", "train_id", "color"])


LABELS = (
    Label("unlabeled", 0, 255, (0, 0, 0)),
    Label("ego vehicle", 1, 255, (0, 0, 0)),
    Label("rectification border", 2, 255, (0, 0, 0)),
    Label("out of roi", 3, 255, (0, 0, 0)),
    Label("static", 4, 255, (0, 0, 0)),
    Label("dynamic", 5, 255, (111, 74, 0)),
    Label("ground", 6, 255, (81, 0, 81)),
    Label("road", 7, 0, (128, 64, 128)),
    Label("sidewalk", 8, 1, (244, 35, 232)),
    Label("parking", 9, 255, (250, 170, 160)),
    Label("rail track", 10, 255, (230, 150, 140)),
    Label("building", 11, 2, (70, 70, 70)),
    Label("wall", 12, 3, (102, 102, 156)),
    Label("fence", 13, 4, (190, 153, 153)),
    Label("guard rail", 14, 255, (180, 165, 180)),
    Label("bridge", 15, 255, (150, 100, 100)),
    Label("tunnel", 16, 255, (150, 120, 90)),
    Label("pole", 17, 5, (153, 153, 153)),
    Label("polegroup", 18, 255, (153, 153, 153)),
    Label("traffic light", 19, 6, (250, 170, 30)),
    Label("traffic sign", 20, 7, (220, 220, 0)),
    Label("vegetation", 21, 8, (107, 142, 35)),
    Label("terrain", 22, 9, (152, 251, 152)),
    Label("sky", 23, 10, (70, 130, 180)),
    Label("person", 24, 11, (220, 20, 60)),
    Label("rider", 25, 12, (255, 0, 0)),
    Label("car", 26, 13, (0, 0, 142)),
    Label("truck", 27, 14, (0, 0, 70)),
    Label("bus", 28, 15, (0, 60, 100)),
    Label("caravan", 29, 255, (0, 0, 90)),
    Label("trailer", 30, 255, (0, 0, 110)),
    Label("train", 31, 16, (0, 80, 100)),
    Label("motorcycle", 32, 17, (0, 0, 230)),
    Label("bicycle", 33, 18, (119, 11, 32)),
    Label("license plate", -1, -1, (0, 0, 142)),
)


_TRAINED = sorted((l for l in LABELS if 0 <= l.train_id < IGNORE_LABEL), key=lambda l: l.train_id)


NUM_CLASSES = len(_TRAINED)  # 19


CLASS_NAMES = tuple(l.name for l in _TRAINED)


# [19, 3] uint8, indexed by trainId: the palette for models.pspnet.inference.colorize.
CLASS_COLORS = np.array([l.color for l in _TRAINED], np.uint8)


# 256-entry lookup tables cover every uint8 value. labelIds without a trainId
# map to ignore; ignore (and any other non-class value) maps back to
# "unlabeled" (0), which the official evaluator treats as void.
_TO_TRAIN_ID = np.full(256, IGNORE_LABEL, np.int32)


_TO_LABEL_ID = np.zeros(256, np.int32)
for _l in _TRAINED:
    _TO_TRAIN_ID[_l.id] = _l.train_id
    _TO_LABEL_ID[_l.train_id] = _l.id


# Largest labelId in the table; values above it (up to 255) are not Cityscapes classes.
MAX_LABEL_ID = max(l.id for l in LABELS)


def _lookup(table, x, outside):
    """table[x] with `outside` where x is not in 0..255; keeps x's type and dtype."""
    if tf.is_tensor(x):
        index = tf.cast(x, tf.int32)
        inside = (index >= 0) & (index < len(table))
        values = tf.gather(tf.constant(table), tf.clip_by_value(index, 0, len(table) - 1))
        return tf.cast(tf.where(inside, values, outside), x.dtype)
    x = np.asarray(x)
    inside = (x >= 0) & (x < len(table))
    return np.where(inside, table[np.clip(x, 0, len(table) - 1)], outside).astype(x.dtype)


def to_train_ids(label_ids):
    """labelIds -> trainIds (0..18, 255 for everything not trained on).

    label_ids: NumPy array or tensor, any shape, an integer dtype that holds 255.
    Returns the same kind, shape and dtype.
    """
    return _lookup(_TO_TRAIN_ID, label_ids, IGNORE_LABEL)


def to_label_ids(train_ids):
    """trainIds -> labelIds (255 and any other non-class value -> 0, "unlabeled").

    train_ids: NumPy array or tensor, any shape, integer dtype (e.g. an argmax).
    Returns the same kind, shape and dtype.
    """
    return _lookup(_TO_LABEL_ID, train_ids, 0)

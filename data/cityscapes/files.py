"""The official Cityscapes folder layout: listing one split, every file checked before decoding.

    root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

`find_examples` lists and checks (headers and ends only, data.images); `explain_decode_error`
maps a TensorFlow decode error met later, in tf.data, back to the file. data.cityscapes reads
the listed files (and re-exports these names).
"""
import collections
import os
import re
import sys

import tensorflow as tf

from data import images
from data.images import BadImageError

Example = collections.namedtuple("Example", ["id", "image_path", "label_path"])


def find_examples(root, split, with_labels=True, *, skip_bad=False, skipped=None):
    """Lists one split of the official folder layout, sorted by id, every file checked.

    root: the folder that holds leftImg8bit/ and gtFine/ (local or any tf.io.gfile
    path). Returns [Example(id, image_path, label_path)]; label_path is None when
    with_labels is False.

    Each image and label has its header and end checked once here (data.images:
    well under a millisecond a file, no pixel decoding), so the TensorFlow decoders
    later meet only complete PNGs of matching sizes. A bad example (an image that is
    empty, truncated, not a PNG; a label that is missing, not an 8-bit one-channel
    PNG, or of another size than its image) raises BadImageError naming the file,
    or with skip_bad=True is left out with a one-line warning each and a count
    (and its message appended to the list `skipped`, if given, for a final count).
    Greyscale, RGBA and 16-bit images are accepted: decoding converts them as
    data.images.read_image does (grey -> RGB, alpha dropped, 16-bit v >> 8).
    Raises FileNotFoundError naming the folder when root or the split is missing.
    """
    image_dir = os.path.join(root, "leftImg8bit", split)
    if not tf.io.gfile.isdir(image_dir):
        raise FileNotFoundError(_missing_folder_message(root, split, image_dir))
    suffix = "_leftImg8bit.png"
    image_paths = sorted(tf.io.gfile.glob(os.path.join(image_dir, "*", "*" + suffix)))
    if not image_paths:
        raise FileNotFoundError(f"{image_dir}: no <city>/*{suffix} images in it")
    label_paths = set()
    if with_labels:
        label_dir = os.path.join(root, "gtFine", split)
        if not tf.io.gfile.isdir(label_dir):
            raise FileNotFoundError(f"{label_dir}: no such folder; the labels come from gtFine_trainvaltest.zip "
                                    "(unpack it next to leftImg8bit/)")
        label_paths = set(tf.io.gfile.glob(os.path.join(label_dir, "*", "*_gtFine_labelIds.png")))
    examples, problems = [], []
    for image_path in image_paths:
        city = os.path.basename(os.path.dirname(image_path))
        example_id = os.path.basename(image_path)[: -len(suffix)]
        label_path = None
        if with_labels:
            label_path = os.path.join(root, "gtFine", split, city, example_id + "_gtFine_labelIds.png")
        try:
            _check_example(image_path, label_path, label_path in label_paths)
        except (BadImageError, FileNotFoundError) as error:
            if not skip_bad:
                raise
            problems.append(str(error))
            if skipped is not None:
                skipped.append(str(error))
            continue
        examples.append(Example(example_id, image_path, label_path))
    for problem in problems:
        print(f"warning: skipped: {problem}", file=sys.stderr)
    if problems:
        print(f"warning: skipped {len(problems)} of {len(image_paths)} {split} examples with bad files "
              "(--skip-bad)", file=sys.stderr, flush=True)
    if not examples:
        raise FileNotFoundError(f"{image_dir}: none of its {len(image_paths)} examples is usable")
    return examples


def _missing_folder_message(root, split, image_dir):
    """Says which level of root/leftImg8bit/<split> is missing, and what to pass."""
    hint = "pass the Cityscapes root that holds leftImg8bit/ and gtFine/"
    if not tf.io.gfile.isdir(root):
        return f"{root}: no such folder; {hint}"
    if not tf.io.gfile.listdir(root):
        return f"{root}: empty folder; {hint}"
    images_root = os.path.join(root, "leftImg8bit")
    if not tf.io.gfile.isdir(images_root):
        return f"{root}: no leftImg8bit/ folder in it; {hint} (unpacked from leftImg8bit_trainvaltest.zip)"
    splits = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(images_root))
    return f"{image_dir}: no such folder (splits there: {', '.join(splits) or 'none'})"


def _check_example(image_path, label_path, label_exists):
    """Header checks of one example (see find_examples); raises BadImageError naming the file."""
    image = images.inspect_image(image_path)
    if image.format != "PNG":
        raise BadImageError(f"{image_path}: {image.format} data, not PNG; Cityscapes images are PNG files")
    if label_path is None:
        return
    if not label_exists:
        raise FileNotFoundError(f"{label_path}: missing label for {image_path} "
                                "(labels come from gtFine_trainvaltest.zip)")
    label = images.check_label_png(label_path)
    if (label.height, label.width) != (image.height, image.width):
        raise BadImageError(f"{label_path}: label is {label.height}x{label.width}, its image {image_path} is "
                            f"{image.height}x{image.width}; a label must match its image pixel for pixel")


def explain_decode_error(error, examples=None):
    """A tf.errors.InvalidArgumentError from iterating a reader's dataset -> a BadImageError naming the
    file (or example), or None when it is not about a file.

    TensorFlow's decoders name no file. A label-size mismatch (TFDS records) names its example in
    the error already; otherwise, given `examples` (find_examples), every file is decoded with
    Pillow until the damaged one is found: slow, so for the error path only. Use:

        try:
            for batch in dataset: ...
        except tf.errors.InvalidArgumentError as error:
            bad = cityscapes.explain_decode_error(error, examples)
            if bad is None:
                raise
            raise bad from None
    """
    size_error = re.search(r"\[([^\]]*: label size differs from its image)\]", getattr(error, "message", str(error)))
    if size_error:
        return BadImageError(size_error.group(1))
    if not examples:
        return None
    paths = [path for e in examples for path in (e.image_path, e.label_path) if path]
    return images.find_undecodable(paths)

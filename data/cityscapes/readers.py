"""Cityscapes (fine annotations) readers: the official folders or TFDS, as the same elements.

Two readers give the same elements, so everything downstream is shared:

    read_folder(root, split)   the official folders, as unpacked from
                               leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip:
        root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
        root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
                               (listed and checked by data.cityscapes.files.find_examples)
    read_tfds(split, ...)      TFDS `cityscapes/semantic_segmentation`, built
                               offline from those two zips.

    element = {"image": uint8 [H, W, 3] RGB,
               "label": uint8 [H, W] labelIds (raw, as on disk; absent if with_labels=False),
               "id":    string [] "<city>_<seq>_<frame>"}

The pipelines turn these into model inputs: `train_pipeline` applies the PSPNet
recipe (random scale 0.5-2, rotation +-10 degrees, blur, mirror, pad, 713x713
crop) and yields
`(image float32 [B, h, w, 3], label int32 [B, h, w] trainIds)` for `fit`;
`eval_pipeline` keeps full images and ids for the benchmark-style evaluation.
Labels use trainIds 0..18 with 255 = ignore; predictions go back to labelIds
with `to_label_ids` because the official evaluator reads labelIds.

With tf.distribute, build the input per worker so files are sharded before
decoding and each worker draws different augmentations:

    def dataset_fn(ctx):
        examples = read_folder(root, "train", shuffle=True, seed=seed, input_context=ctx)
        return train_pipeline(examples, batch_size=ctx.get_per_replica_batch_size(global_batch),
                              seed=seed + ctx.input_pipeline_id)
    dataset = strategy.distribute_datasets_from_function(dataset_fn)
"""
import sys

import tensorflow as tf

from data.cityscapes.files import find_examples
from data.cityscapes.labels import MAX_LABEL_ID


_TFDS_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def read_folder(root, split, *, with_labels=True, shuffle=False, seed=None, input_context=None,
                skip_bad=False, skipped=None):
    """The official folder layout as a dataset of decoded elements (see module doc).

    Files are checked (find_examples; skip_bad leaves bad examples out and lists
    them in `skipped`), then
    sharded (input_context: a tf.distribute.InputContext) and shuffled (a full
    reshuffle every epoch) before any image is decoded.
    """
    examples = find_examples(root, split, with_labels, skip_bad=skip_bad, skipped=skipped)
    encoded = {
        "id": [e.id for e in examples],
        "image": [e.image_path for e in examples],
    }
    if with_labels:
        encoded["label"] = [e.label_path for e in examples]
    dataset = tf.data.Dataset.from_tensor_slices(encoded)
    if input_context is not None:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle:
        dataset = dataset.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)

    def read(element):
        encoded = {k: v if k == "id" else tf.io.read_file(v) for k, v in element.items()}
        return _decode(encoded, label_name=element.get("label"))

    return dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE)


def read_tfds(split, *, data_dir=None, manual_dir=None, with_labels=True, shuffle=False, seed=None,
              input_context=None, shuffle_buffer=64):
    """TFDS `cityscapes/semantic_segmentation` as a dataset of decoded elements.

    split: "train", "val" or "test" (TFDS calls val "validation"). The first
    call builds the dataset in data_dir from leftImg8bit_trainvaltest.zip and
    gtFine_trainvaltest.zip in manual_dir. Shuffling mixes TFDS's files, then a
    buffer of `shuffle_buffer` still-encoded examples.
    """
    import tensorflow_datasets as tfds

    if split not in _TFDS_SPLITS:
        raise ValueError(f"split must be one of {sorted(_TFDS_SPLITS)}, got {split!r}")
    try:
        dataset = tfds.load(
            "cityscapes/semantic_segmentation",
            split=_TFDS_SPLITS[split],
            data_dir=data_dir,
            shuffle_files=shuffle,
            # PNGs stay encoded until after sharding and shuffling; _decode
            # then treats them exactly as read_folder's files.
            decoders={"image_left": tfds.decode.SkipDecoding(),
                      "segmentation_label": tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(input_context=input_context, shuffle_seed=seed),
            download_and_prepare_kwargs={
                "download_config": tfds.download.DownloadConfig(manual_dir=manual_dir)
            },
        )
    except AssertionError as error:
        if "download the dataset files manually" not in str(error):
            raise
        raise FileNotFoundError(
            f"{manual_dir}: put leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip "
            "from cityscapes-dataset.com there (they cannot be downloaded automatically)"
        ) from None
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def rename(element):
        renamed = {"id": element["image_id"], "image": element["image_left"]}
        if with_labels:
            renamed["label"] = element["segmentation_label"]
        return renamed

    return dataset.map(rename).map(_decode, num_parallel_calls=tf.data.AUTOTUNE)


def _decode(element, label_name=None):
    """{"id", "image": PNG bytes, "label": PNG bytes} -> the decoded element.

    label_name: string [] naming the label in warnings (its path; default the id).
    Label pixels whose labelId is not in LABELS (34..255) become ignore through
    to_train_ids like every void class; each label holding any gets a one-line
    warning on stderr with their count, so a wrongly encoded label set (trainIds
    or colours saved as labelIds) does not train on "ignore" silently.
    """
    image = tf.io.decode_png(element["image"], channels=3)
    decoded = {"id": element["id"], "image": image}
    if "label" in element:
        label = tf.io.decode_png(element["label"], channels=1)[..., 0]
        size_ok = tf.reduce_all(tf.shape(label) == tf.shape(image)[:2])
        outside = tf.math.count_nonzero(label > MAX_LABEL_ID)
        name = element["id"] if label_name is None else label_name
        with tf.control_dependencies([
            # read_folder checked the sizes from the headers already; TFDS's files only get this check.
            tf.debugging.Assert(size_ok, [tf.strings.join([element["id"], ": label size differs from its image"])]),
            tf.cond(outside > 0, lambda: _warn_outside(name, outside), tf.no_op),
        ]):
            decoded["label"] = tf.identity(label)
    return decoded


def _warn_outside(name, count):
    message = tf.strings.join([
        "warning: ", name, ": ", tf.strings.as_string(count),
        f" label pixels have labelIds outside the Cityscapes table (> {MAX_LABEL_ID}); they are ignored"])
    return tf.print(message, output_stream=sys.stderr)



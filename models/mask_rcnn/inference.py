"""Mask R-CNN inference pieces: class prediction, class-picked masks, pasting, oracle-box prediction.

Class picking happens in the graph (layers below), so an exported model keeps
it: the class branch's most likely object class selects that class's channel of
the mask branch.
"""
import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="models")
class PredictClass(keras.layers.Layer):
    """Most likely object class of each RoI and its probability.

    Call: class logits [B, R, K + 1] (channel 0 = background) ->
    [class_ids [B, R] int32 in 1..K, scores [B, R] float32]. The background is
    left out of the argmax (the RoIs are known objects: oracle boxes, or
    detections) but not of the softmax, so a RoI that looks like background
    gets a low score.
    """

    def call(self, class_logits):
        probs = tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1)
        class_ids = tf.argmax(probs[..., 1:], axis=-1, output_type=tf.int32) + 1
        scores = tf.gather(probs, class_ids, axis=-1, batch_dims=2)
        return class_ids, scores


def pick_mask_channel(mask_logits, class_ids):
    """mask_logits [B, R, h, w, K + 1], class_ids [B, R] int -> probabilities [B, R, h, w] float32."""
    picked = tf.gather(tf.cast(mask_logits, tf.float32), tf.cast(class_ids, tf.int32), axis=-1, batch_dims=2)
    return tf.sigmoid(picked)


@keras.saving.register_keras_serializable(package="models")
class PickMaskChannel(keras.layers.Layer):
    """Call: [mask logits [B, R, h, w, K + 1], class_ids [B, R] int] -> mask probabilities [B, R, h, w] float32."""

    def call(self, inputs):
        mask_logits, class_ids = inputs
        return pick_mask_channel(mask_logits, class_ids)

    def compute_output_shape(self, input_shapes):
        return input_shapes[0][:4]


def _paste_weights(start, end, mask_size, length):
    """[N, length, mask_size + 2] bilinear weights of the zero-bordered mask rows for each image row.

    The border makes the box one mask pixel larger on each side; image pixel
    r (centre r + 0.5) reads the bordered mask at index (r + 0.5 - start) / pixel + 0.5.
    """
    pixel = (end - start) / mask_size
    position = tf.math.divide_no_nan(tf.range(length, dtype=tf.float32)[None, :] + 0.5 - start[:, None],
                                     pixel[:, None]) + 0.5
    weight = tf.maximum(0.0, 1.0 - tf.abs(position[..., None] - tf.range(mask_size + 2, dtype=tf.float32)))
    # An empty box pastes nothing.
    return weight * tf.cast(pixel > 0, tf.float32)[:, None, None]


def paste_masks(masks, boxes, image_size, threshold=0.5):
    """Paste RoI masks into the image, all instances at once.

    masks: [N, h, w] float probabilities; boxes: [N, 4] float (y1, x1, y2, x2)
    in pixels of the target image; image_size: (H, W).
    Each mask gets a 1-pixel zero border (so it fades to 0 across its box
    edge), is resampled bilinearly at the image's pixel centres inside the
    enlarged box (separable: two small weight matrices), and thresholded.
    Returns [N, H, W] bool: value >= threshold.
    """
    masks = tf.cast(masks, tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    height, width = image_size
    padded = tf.pad(masks, [[0, 0], [1, 1], [1, 1]])
    rows = _paste_weights(boxes[:, 0], boxes[:, 2], masks.shape[1], height)
    cols = _paste_weights(boxes[:, 1], boxes[:, 3], masks.shape[2], width)
    values = tf.einsum("nrp,npq->nrq", rows, padded)
    values = tf.einsum("nrq,ncq->nrc", values, cols)
    return values >= threshold


def predict_oracle_masks(model, dataset, *, class_source="predicted", threshold=0.5):
    """Masks for the ground-truth boxes of every image of an evaluation dataset.

    model: the heads model (build_mask_head_model) or a MaskHeadTrainer.
    dataset: batches as data.coco.make_dataset(..., training=False) yields them.
    class_source: "predicted" (the class branch picks the channel and gives the
        category and score: the default, what a detector would do) or
        "ground_truth" (the annotated class picks the channel; score = that
        class's probability).
    Returns a list, one dict per image: image_id int, boxes [N, 4] and masks
    [N, H, W] uint8 0/1 at the original image size, class_ids [N] int32 (1..K),
    scores [N] float32.
    """
    if class_source not in ("predicted", "ground_truth"):
        raise ValueError(f'class_source must be "predicted" or "ground_truth", got {class_source!r}')
    network = getattr(model, "network", model)

    @tf.function(reduce_retracing=True)
    def run(image, rois):
        return network({"image": image, "rois": rois}, training=False)

    predictions = []
    for batch in dataset:
        outputs = run(batch["image"], batch["boxes"])
        if class_source == "predicted":
            class_ids, scores, masks = outputs["class_ids"], outputs["scores"], outputs["masks"]
        else:
            class_ids = batch["class_ids"]
            probs = tf.nn.softmax(outputs["class_logits"], axis=-1)
            scores = tf.gather(probs, class_ids, axis=-1, batch_dims=2)
            masks = pick_mask_channel(outputs["mask_logits"], class_ids)
        for b in range(int(tf.shape(batch["image"])[0])):
            n = int(batch["num_instances"][b])
            original = batch["original_size"][b].numpy()
            ratio = tf.cast(tf.tile(original / batch["image_size"][b].numpy(), [2]), tf.float32)
            boxes = batch["boxes"][b, :n] * ratio
            pasted = paste_masks(masks[b, :n], boxes, (int(original[0]), int(original[1])), threshold)
            predictions.append({
                "image_id": int(batch["image_id"][b]), "boxes": boxes.numpy(),
                "masks": pasted.numpy().astype(np.uint8), "class_ids": class_ids[b, :n].numpy().astype(np.int32),
                "scores": scores[b, :n].numpy().astype(np.float32)})
    return predictions

"""The oracle-box view of a detector: its class and mask branches on given boxes (evaluate.py --boxes gt).

Scores the mask branch alone, with the ground-truth boxes standing in for the
detections, as the Mask R-CNN paper's mask-head ablations do.
    heads = oracle_heads_model(detector)
    predictions = predict_oracle_masks(heads, data.coco.make_dataset(split, batch_size=1, training=False))
"""
import keras
import numpy as np
import tensorflow as tf

from models.mask_rcnn.detector import detector_layers
from models.mask_rcnn.paste import paste_masks
from models.mask_rcnn.roi_heads import PickMaskChannel, PredictClass, pick_mask_channel
from models.mask_rcnn.transform import detector_inputs


def oracle_heads_model(detector):
    """keras.Model {"image" [B, H, W, 3], "rois" [B, R, 4]} -> the detector's class and mask branches on those boxes.

    image: the detector's normalised, padded images (transform.detector_inputs(batch)["images"]);
    rois: (y1, x1, y2, x2) in those images' pixels. The model holds no weights
    of its own: it is the detector's FPN, RoIAligns, box head (its class
    logits) and mask head, so it follows the detector as it trains.
    Outputs (what predict_oracle_masks reads):
    class_logits [B, R, K + 1], mask_logits [B, R, 28, 28, K + 1], class_ids
    [B, R] int32 (the most likely object class, background left out), scores
    [B, R] (its softmax probability), masks [B, R, 28, 28] (that class's mask
    probabilities).
    """
    layers = detector_layers(detector)
    image = keras.Input((None, None, 3), name="image")
    rois = keras.Input((None, 4), name="rois")
    pyramid = layers["fpn"](image)
    levels = [pyramid[f"P{k}"] for k in range(2, 6)]
    class_logits, _ = layers["box_head"](layers["box_roi_align"]([rois, *levels]))
    mask_logits = layers["mask_head"](layers["mask_roi_align"]([rois, *levels]))
    class_ids, scores = PredictClass(name="predict_class")(class_logits)
    masks = PickMaskChannel(name="picked_masks")([mask_logits, class_ids])
    return keras.Model({"image": image, "rois": rois},
                       {"class_logits": class_logits, "mask_logits": mask_logits, "class_ids": class_ids,
                        "scores": scores, "masks": masks}, name=f"{detector.name}_oracle")


def predict_oracle_masks(model, dataset, *, class_source="predicted", threshold=0.5, progress=None, total=None):
    """Masks for the ground-truth boxes of every image of an evaluation dataset.

    model: oracle_heads_model(detector).
    dataset: batches as data.coco.make_dataset(..., training=False) yields them.
    class_source: "predicted" (the class branch picks the channel and gives the
        category and score: the default, what a detector would do) or
        "ground_truth" (the annotated class picks the channel; score = that
        class's probability).
    Returns a list, one dict per image: image_id int, boxes [N, 4] float32 in
    pixels of the original image, masks a PastedMasks of N masks at the original
    image size (H, W) (.dense() [N, H, W] bool, .rle() COCO RLEs, as
    data.coco.segm_results takes them), class_ids [N] int32 (1..K), scores [N] float32.
    progress: a data.progress.Progress (None: shown on stderr), over `total` images (None: unknown).
    """
    from data.progress import as_progress

    if class_source not in ("predicted", "ground_truth"):
        raise ValueError(f'class_source must be "predicted" or "ground_truth", got {class_source!r}')

    @tf.function(reduce_retracing=True)
    def run(batch):
        return model({"image": detector_inputs(batch)["images"], "rois": batch["boxes"]}, training=False)

    predictions = []
    with as_progress(progress).bar(total, "evaluating") as bar:
        for batch in dataset:
            outputs = run({key: batch[key] for key in ("image", "original_size", "image_size", "boxes")})
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
                boxes = (batch["boxes"][b, :n] * ratio).numpy()
                predictions.append({
                    "image_id": int(batch["image_id"][b]), "boxes": boxes,
                    "masks": paste_masks(masks[b, :n], boxes, (int(original[0]), int(original[1])), threshold),
                    "class_ids": class_ids[b, :n].numpy().astype(np.int32),
                    "scores": scores[b, :n].numpy().astype(np.float32)})
            bar.update(int(tf.shape(batch["image"])[0]))
    return predictions

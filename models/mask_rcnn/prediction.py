"""Running a trained detector over a dataset (models/mask_rcnn/evaluation.py) or over image files
(predict.py), and drawing its detections.

Every detection ends in the original image's pixels: boxes [N, 4] float32
(y1, x1, y2, x2), class_ids [N] int32 (1..K), scores [N] float32
(decreasing), masks a PastedMasks (.dense() [N, H, W] bool, .rle()).
"""
import numpy as np

from models.mask_rcnn.transform import detect, detector_inputs, in_original_pixels, run_graph


class ModelCategories:
    """The dataset category ids and names a detector carries (its "categories" layer), as data.coco.Categories maps them.

    coco_ids[k - 1], names[k - 1]: the category id and name of class k.
    """

    def __init__(self, detector):
        layer = detector.get_layer("categories")
        self.coco_ids = tuple(layer.category_ids)
        self.names = tuple(layer.category_names)

    @property
    def num_classes(self):
        return len(self.coco_ids)

    def to_coco(self, class_ids):
        """Class ids 1..K (array) -> the dataset's category ids (int64 array)."""
        return np.asarray(self.coco_ids, np.int64)[np.asarray(class_ids, np.int64) - 1]


def detect_dataset(detector, dataset, *, score_threshold=0.0, detections_per_image=None, mask_threshold=0.5,
                   mask_above=False, progress=None, total=None):
    """Detections of every image of a data.coco.make_dataset(..., training=False) dataset.

    Kept: the detections scoring > score_threshold (torchvision's rule), the
    best detections_per_image of them (None: all the model gives). Mask
    pixels are on iff probability >= mask_threshold, or > with mask_above.

    Images are resized, normalised and padded as the pipeline's image_size says
    (transform.detector_inputs, the transform detect uses); boxes and masks come
    back in each original image's pixels (transform.in_original_pixels, as
    transform.detect does for photos).
    progress: a data.progress.Progress (None: shown on stderr), over `total` images (None: unknown).
    Returns a list, one dict per image: image_id int and the module's detection fields.
    """
    from data.progress import as_progress

    # scores >= the next float64 above the threshold <=> scores > threshold (float32 scores are float64 values).
    at_least = float(np.nextafter(float(score_threshold), np.inf))
    predictions = []
    with as_progress(progress).bar(total, "evaluating") as bar:
        for batch in dataset:
            inputs = detector_inputs(batch)
            outputs = run_graph(detector, inputs["images"], inputs["image_sizes"])
            if detections_per_image is not None:  # scores decrease: the best N are a prefix
                outputs["num_detections"] = np.minimum(outputs["num_detections"], detections_per_image)
            for b, (resized, original) in enumerate(zip(batch["image_size"].numpy(),
                                                        batch["original_size"].numpy())):
                detection = in_original_pixels(outputs, b, resized, original, score_threshold=at_least,
                                               mask_threshold=mask_threshold, mask_above=mask_above)
                predictions.append({"image_id": int(batch["image_id"][b]), **detection})
                bar.update()
    return predictions


def instance_colours(count):
    """[count, 3] uint8: well separated colours (golden-ratio hues), the same for the same index in every image."""
    import colorsys

    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb((0.61803398875 * i) % 1.0, 0.85, 0.95)]
                     for i in range(count)], np.uint8).reshape(count, 3)


def draw_detections(rgb, detection, names, *, alpha=0.5):
    """The image with each instance's mask in its own colour, its box and "name score": [H, W, 3] uint8.

    rgb: [H, W, 3] uint8; detection: one detection dict (original pixels);
    names: class k's name at index k - 1.
    """
    from PIL import Image, ImageDraw

    out = np.asarray(rgb, np.float32).copy()
    colours = instance_colours(len(detection["class_ids"]))
    for mask, colour in zip(detection["masks"].dense(), colours):
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    image = Image.fromarray(np.round(out).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for (y1, x1, y2, x2), class_id, score, colour in zip(detection["boxes"], detection["class_ids"],
                                                         detection["scores"], colours):
        colour = tuple(int(c) for c in colour)
        draw.rectangle([float(x1), float(y1), float(x2), float(y2)], outline=colour, width=2)
        label = f"{names[int(class_id) - 1]} {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((float(x1), float(y1)), label)
        top_edge = max(float(y1) - (bottom - top) - 2, 0.0)  # above the box, or inside it at the image's top
        draw.rectangle([left, top_edge, right + 2, top_edge + (bottom - top) + 2], fill=colour)
        draw.text((float(x1) + 1, top_edge), label, fill=(0, 0, 0))
    return np.asarray(image)


def predict_files(detector, paths, out_dir, *, short_side=800, long_side=1333, score_threshold=0.5, alpha=0.5,
                  overwrite=False, skip_bad=False, progress=None):
    """predict.py --model mask_rcnn: an overlay per image and one detections.json for all.

    Writes OUT/NAME_overlay.png (draw_detections) for each image NAME and
    OUT/detections.json in the COCO results format (the category ids the model
    carries, bbox [x, y, w, h], the mask's RLE, score; image_id numbers the
    images from 1 in order, file_name names them). short_side, long_side: the
    resize (predict.py's --short-side, --long-side; transform.detect's min_size,
    max_size). The loop is data.image_files.predict_over_images: existing
    outputs are refused (UsageError) unless overwrite; a bad image raises
    data.images.BadImageError, or with skip_bad is skipped with a warning and
    counted; progress: a data.progress.Progress (None: shown on stderr).
    Returns the overlay paths written.
    """
    import os

    from data import images
    from data.coco import segm_results, write_results
    from data.coco.results import bbox_results
    from data.image_files import predict_over_images

    categories = ModelCategories(detector)
    results = []

    def work(image_id, path, rgb, targets):
        detection = detect(detector, [rgb], min_size=short_side, max_size=long_side,
                           score_threshold=score_threshold)[0]
        images.write_png(targets["overlay"], draw_detections(rgb, detection, categories.names, alpha=alpha))
        found = dict(detection, image_id=image_id)
        # One entry per detection: its box, its mask and its score together.
        for box, mask in zip(bbox_results([found], categories), segm_results([found], categories)):
            results.append({**box, "segmentation": mask["segmentation"], "file_name": os.path.basename(path)})
        return f"{path}: {len(detection['class_ids'])} detection(s) scoring >= {score_threshold}"

    json_name = "detections.json"
    done = predict_over_images(paths, out_dir, ("overlay",), work, shared=(json_name,), overwrite=overwrite,
                               skip_bad=skip_bad, progress=progress)
    json_path = os.path.join(out_dir, json_name)
    write_results(json_path, results)
    print(f"wrote {len(done)} overlay(s) and {json_path} to {out_dir}")
    return [targets["overlay"] for _, targets in done]

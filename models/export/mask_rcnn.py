"""A Mask R-CNN detector as one servable graph: uint8 RGB image in, detections in the image's pixels out.

DetectorServing wraps a build_mask_rcnn model with what models/mask_rcnn/transform.py's
detect does around it, in TensorFlow ops an exporter knows (tf2onnx -> onnxruntime,
OpenVINO from the ONNX file): the resize to data.coco.resized_size's size (torchvision's
rule, computed by resized_size_int32), normalisation and padding (transform.resize_normalize_pad_equal), the detector
with its NMS traced by models.mask_rcnn.nms.portable_nms (CombinedNonMaxSuppression
converts nowhere), the score threshold, the boxes scaled back per axis and swapped to
(x1, y1, x2, y2), and the masks pasted into the image as torchvision pastes them
(paste_masks_dense; models.mask_rcnn.paste.paste_masks is its NumPy twin, which predict.py uses).
"""
import keras
import tensorflow as tf

from data.coco.pipeline import resized_size_int32
from models.mask_rcnn.nms import portable_nms
from models.mask_rcnn.prediction import ModelCategories
from models.mask_rcnn.transform import resize_normalize_pad_equal

PASTE_SCOPE = "paste_masks"  # the name scope of the in-graph paste's ops
SIZE_DIVISIBLE = 32  # the detector's padding (transform.preprocess's size_divisible)
OUTPUTS = {
    "boxes": "[N, 4] float32 (x1, y1, x2, y2) in the input image's pixels",
    "class_ids": "[N] int32, the dataset's category ids (metadata class_names)",
    "scores": "[N] float32, decreasing, >= score_threshold",
    "masks": "[N, H, W] uint8 0/1, the instance's pixels in the input image",
    "num_detections": "[] int32, N",
}


def _axis_weights(first, last, mask_size, length):
    """Bilinear weights [..., length, mask_size + 2] of torchvision's paste along one axis.

    first, last: [...] float32 whole numbers, the grown box's truncated edges on this
    axis (torchvision's window: pixels first..last, h' = max(last - first + 1, 1) of
    them). Window pixel j reads the bordered mask (S = mask_size + 2 rows) at
    src = max((j + 0.5) * S / h' - 0.5, 0), as F.interpolate(align_corners=False)
    does in float32: weight 1 - (src - floor(src)) on row floor(src), src - floor(src)
    on the next (past the last row: dropped, it would read the zero border anyway).
    Pixels outside the window (and every pixel of an inverted box) weigh nothing.
    """
    bordered = mask_size + 2
    pixel = tf.range(tf.cast(length, tf.float32))  # [length]
    first, last = first[..., None], last[..., None]
    size = tf.maximum(last - first + 1.0, 1.0)
    src = tf.maximum((pixel - first + 0.5) * (float(bordered) / size) - 0.5, 0.0)  # [..., length]
    low = tf.floor(src)
    high_weight = src - low
    rows = tf.range(float(bordered))
    weights = ((1.0 - high_weight)[..., None] * tf.cast(tf.equal(rows, low[..., None]), tf.float32)
               + high_weight[..., None] * tf.cast(tf.equal(rows, low[..., None] + 1.0), tf.float32))
    in_window = tf.cast((pixel >= first) & (pixel <= last), tf.float32)
    return weights * in_window[..., None]


def paste_masks_dense(masks, boxes, image_size, threshold):
    """torchvision's paste_masks_in_image, thresholded, as two small matrix products per mask (graph ops only).

    masks: [..., M, M] float32 probabilities; boxes: [..., 4] float32 (y1, x1, y2, x2) in
    the image's pixels; image_size: (H, W) int32 scalars; threshold: a pixel is on iff
    its value >= threshold (paste_masks' default rule).
    Each box is grown by (M + 2) / M about its centre and truncated to whole pixels,
    the mask gets a 1-pixel zero border and is resized bilinearly to the box's window:
    pasted[k] = Ry[k] @ (bordered[k] @ Rx[k]^T), the products in the order
    F.interpolate sums (along x first), Ry [..., H, M + 2] and Rx [..., W, M + 2] from
    _axis_weights. Returns [..., H, W] bool. No reshape: a batch with no detection has a
    0 in its shape, which an ONNX Reshape reads as "copy this dimension" (onnxruntime and
    OpenVINO then fail). Its ops carry the name scope PASTE_SCOPE (int8 leaves them in float:
    models/export/quantize.py).
    """
    mask_size = masks.shape[-1]
    with tf.name_scope(PASTE_SCOPE):
        return _paste(masks, boxes, image_size, threshold, mask_size)


def _paste(masks, boxes, image_size, threshold, mask_size):
    masks = tf.cast(masks, tf.float32)
    bordered = tf.pad(masks, [[0, 0]] * (len(masks.shape) - 2) + [[1, 1], [1, 1]])
    scale = (mask_size + 2) / mask_size
    half = (boxes[..., 2:] - boxes[..., :2]) * 0.5 * scale
    centre = (boxes[..., 2:] + boxes[..., :2]) * 0.5

    def truncate(x):  # torch's float -> int64 conversion, kept in float (no cast whose rounding runtimes differ on)
        return tf.where(x < 0, tf.math.ceil(x), tf.floor(x))

    first, last = truncate(centre - half), truncate(centre + half)  # [..., 2] (y, x)
    rows = _axis_weights(first[..., 0], last[..., 0], mask_size, image_size[0])
    columns = _axis_weights(first[..., 1], last[..., 1], mask_size, image_size[1])
    pasted = tf.matmul(rows, tf.matmul(bordered, columns, transpose_b=True))  # [..., H, W]
    return pasted >= threshold


class DetectorServing(keras.Model):
    """The detector with its input transform and post-processing, for export (see the module docstring).

    Args:
      detector: a build_mask_rcnn model (inputs {"images", "image_sizes"}).
      short_side, long_side: the resize (transform.detect's min_size, max_size).
      score_threshold: metadata's default for the served score_threshold input.
      mask_threshold: a mask pixel is on iff its probability >= mask_threshold.
    """

    def __init__(self, detector, *, short_side=800, long_side=1333, score_threshold=0.5, mask_threshold=0.5,
                 **kwargs):
        super().__init__(**kwargs)
        self.detector = detector
        self.short_side = int(short_side)
        self.long_side = int(long_side)
        self.score_threshold = float(score_threshold)
        self.mask_threshold = float(mask_threshold)
        self.built = True  # nothing to build: the detector has its weights (export refuses unbuilt models)

    def call(self, image, score_threshold=None):
        """image [H, W, 3] uint8 RGB, score_threshold [] float32 -> {"boxes": [N, 4] float32 (x1, y1, x2, y2),
        "class_ids": [N] int32, "scores": [N] float32, "masks": [N, H, W] uint8, "num_detections": [] int32}."""
        outputs = self.call_batch(image[None], score_threshold)
        return {name: value[0] for name, value in outputs.items()}

    def call_batch(self, images, score_threshold=None):
        """images [B, H, W, 3] uint8 RGB of one size -> call's outputs with a leading B, padded with zeros to
        D = the most detections kept in one image: boxes [B, D, 4], class_ids [B, D], scores [B, D],
        masks [B, D, H, W], num_detections [B] int32."""
        if score_threshold is None:
            score_threshold = self.score_threshold
        images = tf.convert_to_tensor(images)
        shape = tf.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        # torchvision's float64 size rule without float64 (OpenVINO would compute it in float32, a pixel off).
        resized = tf.stack(resized_size_int32(height, width, self.short_side, self.long_side))
        # Rounded up without a negative floor division: tf2onnx turns FloorDiv of ints into Div, which truncates.
        padded = (resized + SIZE_DIVISIBLE - 1) // SIZE_DIVISIBLE * SIZE_DIVISIBLE
        pixels = resize_normalize_pad_equal(images, resized, padded)
        with portable_nms():
            found = self.detector({"images": pixels, "image_sizes": tf.tile(resized[None], [batch, 1])},
                                  training=False)
        # Scores decrease: the kept detections of an image are a prefix.
        scores = found["scores"]
        kept = ((tf.range(tf.shape(scores)[1])[None] < found["num_detections"][:, None])
                & (scores >= tf.cast(score_threshold, tf.float32)))
        num_detections = tf.reduce_sum(tf.cast(kept, tf.int32), axis=1)
        most = tf.reduce_max(num_detections)
        kept = kept[:, :most]
        # Back to the input's pixels: original / resized per axis, in float32 as torchvision (transform.in_original_pixels).
        ratio = tf.cast(tf.stack([height, width]), tf.float32) / tf.cast(resized, tf.float32)
        boxes = found["boxes"][:, :most] * tf.tile(ratio, [2]) * tf.cast(kept, tf.float32)[..., None]
        pasted = paste_masks_dense(found["masks"][:, :most], boxes, (height, width), self.mask_threshold)
        # A logical and, not a product: LiteRT has no builtin uint8 multiply.
        pasted = tf.cast(pasted & kept[..., None, None], tf.uint8)
        return {"boxes": tf.gather(boxes, [1, 0, 3, 2], axis=-1),
                "class_ids": tf.where(kept, found["category_ids"][:, :most], 0),
                "scores": tf.where(kept, scores[:, :most], 0.0),
                "masks": pasted, "num_detections": num_detections}

    def input_signature(self, input_size=None):
        """[image [H, W, 3] uint8 (None, None: any size), score_threshold [] float32] for export."""
        height, width = input_size if input_size is not None else (None, None)
        return [tf.TensorSpec([height, width, 3], tf.uint8, name="image"),
                tf.TensorSpec([], tf.float32, name="score_threshold")]

    def batch_signature(self, input_size=None):
        """[images [B, H, W, 3] uint8, score_threshold [] float32] for call_batch."""
        height, width = input_size if input_size is not None else (None, None)
        return [tf.TensorSpec([None, height, width, 3], tf.uint8, name="images"),
                tf.TensorSpec([], tf.float32, name="score_threshold")]

    def metadata(self):
        """JSON-able description: family, inference settings, class_names {category id: name}, outputs."""
        categories = ModelCategories(self.detector)
        return {"family": "mask_rcnn", "short_side": self.short_side, "long_side": self.long_side,
                "score_threshold": self.score_threshold, "mask_threshold": self.mask_threshold,
                "class_names": {int(i): name for i, name in zip(categories.coco_ids, categories.names)},
                "outputs": dict(OUTPUTS)}

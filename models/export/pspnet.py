"""The served PSPNet graph: one uint8 RGB image of any size in, class maps out, nothing of ours needed by a client.

    serving = PSPNetServing(load_inference_model("best.keras"), mode="sliding", crop_size=713, flip=True)
    outputs = serving(image)          # image: uint8 [H, W, 3] -> {"label_ids", "class_ids"[, "probabilities"]}
    serving.export("model.onnx", format="onnx", input_signature=serving.input_signature())

Inside the graph: cast to float32, data.normalization.normalize, then
models.pspnet.inference.predict_logits (the very function predict.py runs: whole
image or sliding window, optional flip averaging of softmax probabilities),
argmax -> class ids (train ids), and a uint8 lookup table -> label ids (by default
Cityscapes trainId -> labelId, what predict.py writes as NAME_labelIds.png).
Every op converts with tf2onnx and runs in onnxruntime and OpenVINO (after
models.export.onnx_loops.add_loop_passthrough_identities for the sliding window's
loop); at a fixed input size the graph converts to LiteRT with builtin ops only
(at unknown sizes the pyramid's 1x1 convolutions see an unknown channel count and
become Flex ops).
"""
import math

import keras
import numpy as np
import tensorflow as tf

from data import cityscapes
from data.normalization import normalize
from models.pspnet.inference import predict_classes, predict_logits

OUTPUTS = {
    "label_ids": "[H, W] uint8: the class of each pixel through the label table (default: Cityscapes labelIds)",
    "class_ids": "[H, W] uint8: the model's class (train id) of each pixel, the argmax of the probabilities",
    "probabilities": "[H, W, C] float32: softmax probabilities, averaged over windows and flips",
}


class PSPNetServing(keras.Model):
    """A PSPNet wrapped for serving (tracked by keras.export.ExportArchive; not meant to be saved as .keras).

    Args:
      model: a PSPNet with only the main logits [B, H, W, C]
        (models.pspnet.inference.load_inference_model); a model with a dict output uses its "main" entry.
      mode, crop_size, stride, flip: as models.pspnet.inference.predict_logits (stride None: ceil(2/3 crop)).
      probabilities: also return the [H, W, C] float32 probabilities.
      label_ids: class id -> label id table (at most 256 values in 0..255; class ids past its end -> 0).
        None: Cityscapes trainId -> labelId (data.cityscapes.to_label_ids) for a 19-class model, else identity.
      class_names: C names for metadata(); None: Cityscapes' train-id names for 19 classes, else class_k.
    """

    def __init__(self, model, *, mode="whole", crop_size=(713, 713), stride=None, flip=False, probabilities=False,
                 label_ids=None, class_names=None):
        super().__init__(name="pspnet_serving")
        if mode not in ("whole", "sliding"):
            raise ValueError(f'mode must be "whole" or "sliding", got {mode!r}.')
        self.model = model
        output = model.output["main"] if isinstance(model.output, dict) else model.output
        self.num_classes = int(output.shape[-1])
        if self.num_classes > 256:
            raise ValueError(f"class_ids are uint8: at most 256 classes, the model has {self.num_classes}.")
        self.mode, self.flip, self.probabilities = mode, bool(flip), bool(probabilities)
        crop = (int(crop_size), int(crop_size)) if np.isscalar(crop_size) else tuple(int(c) for c in crop_size)
        self.crop_size = crop
        if stride is None:
            stride = tuple(math.ceil(c * 2 / 3) for c in crop)  # predict_logits' default, recorded in metadata()
        self.stride = (int(stride), int(stride)) if np.isscalar(stride) else tuple(int(s) for s in stride)
        self.label_table = _label_table(label_ids, self.num_classes)
        if class_names is None:
            class_names = cityscapes.CLASS_NAMES if self.num_classes == cityscapes.NUM_CLASSES else [
                f"class_{k}" for k in range(self.num_classes)]
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class_names for a model of {self.num_classes} classes.")
        self.class_names = [str(name) for name in class_names]
        self.built = True  # no weights of its own (ExportArchive.track refuses an unbuilt model)

    def call(self, image):
        """uint8 [H, W, 3] RGB -> {"label_ids": [H, W] uint8, "class_ids": [H, W] uint8[, "probabilities"]}."""
        return {name: value[0] for name, value in self.call_batch(image[None]).items()}

    def call_batch(self, images):
        """uint8 [N, H, W, 3] RGB, images of one size -> the outputs of call() with a leading N."""
        probabilities = predict_logits(self.model, normalize(images), mode=self.mode, crop_size=self.crop_size,
                                       stride=self.stride, flip=self.flip)
        class_ids = predict_classes(probabilities)  # [N, H, W] int32 in 0..C-1 < 256
        outputs = {
            "label_ids": tf.gather(tf.constant(self.label_table), class_ids),
            "class_ids": tf.cast(class_ids, tf.uint8),
        }
        if self.probabilities:
            outputs["probabilities"] = probabilities
        return outputs

    def input_signature(self, input_size=None):
        """[TensorSpec([H, W, 3], uint8, "image")]; input_size (H, W) or None for any size."""
        height, width = input_size if input_size is not None else (None, None)
        return [tf.TensorSpec([height, width, 3], tf.uint8, name="image")]

    def batch_signature(self, input_size=None):
        """[TensorSpec([None, H, W, 3], uint8, "images")]; input_size (H, W) or None for any size."""
        height, width = input_size if input_size is not None else (None, None)
        return [tf.TensorSpec([None, height, width, 3], tf.uint8, name="images")]

    def metadata(self):
        """What a client needs to read the outputs (JSON-able)."""
        sliding = self.mode == "sliding"
        names = ["label_ids", "class_ids"] + (["probabilities"] if self.probabilities else [])
        return {
            "family": "pspnet",
            "inference": {"mode": self.mode, "crop_size": list(self.crop_size) if sliding else None,
                          "stride": list(self.stride) if sliding else None, "flip": self.flip},
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "label_ids": [int(v) for v in self.label_table[:self.num_classes]],
            "outputs": {name: OUTPUTS[name] for name in names},
        }


def _label_table(label_ids, num_classes):
    """[256] uint8: class id -> label id; ids past the given table -> 0 (as data.cityscapes.to_label_ids)."""
    if label_ids is None:
        if num_classes != cityscapes.NUM_CLASSES:
            return np.arange(256, dtype=np.uint8)
        return cityscapes.to_label_ids(np.arange(256)).astype(np.uint8)
    values = np.asarray(label_ids).reshape(-1)
    if len(values) > 256 or values.min(initial=0) < 0 or values.max(initial=0) > 255:
        raise ValueError("label_ids must hold at most 256 values in 0..255.")
    table = np.zeros(256, np.uint8)
    table[:len(values)] = values
    return table

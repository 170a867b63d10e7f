"""int8 post-training quantization of an OpenVINO export with NNCF, calibrated on a user's images.

Why NNCF on OpenVINO: the served graph keeps its uint8-image interface and in-graph pre- and
post-processing (only the learned layers get int8), the result is one IR that compile_model runs, and
it meets the speed target with room (PSPNet-50 at 0.297x Keras float32, BENCHMARKS.md section 8, with
its accuracy in 8b). onnxruntime's quantize_static has not been measured beside it yet.
"""
import os

from models.export.formats import ExportError

# The layers int8 may touch, per family (None: all): the detector's learned layers only. Quantized, its geometry
# (box scaling back to the image, anchors, proposals, RoIAlign) gave AP 0 on the demo detector and its mask
# paste gave empty masks. Matched on node names, which keep TensorFlow's name scopes through ONNX.
QUANTIZED_LAYERS = {"mask_rcnn": ("fpn", "rpn_head", "box_head", "mask_head"), "pspnet": None}


def quantize_openvino(xml_path, image_paths, metadata):
    """Replaces the float32 IR at xml_path (and its .bin) by its int8 version calibrated on image_paths.

    image_paths: image files (any sizes and formats data.images reads: the served graph resizes them).
    metadata: the serving module's metadata() (the detector's default score_threshold is fed with
    each image). Raises ExportError with NNCF's first line if it fails.
    """
    import nncf
    import numpy as np
    import openvino as ov

    from data.images import read_image

    model = ov.Core().read_model(xml_path)
    takes_threshold = any(port.get_any_name() == "score_threshold" for port in model.inputs)
    threshold = np.asarray(metadata.get("score_threshold", 0.5), np.float32)

    def feed(path):
        return {"image": read_image(path), **({"score_threshold": threshold} if takes_threshold else {})}

    try:
        # PERFORMANCE: symmetric int8 weights and activations, the preset the CPU plugin runs fastest.
        quantized = nncf.quantize(model, nncf.Dataset(list(image_paths), feed),
                                  preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(image_paths),
                                  ignored_scope=_ignored_scope(nncf, metadata["family"]))
    except Exception as error:  # NNCF raises many types; its first line says what failed
        text = str(error).strip()
        raise ExportError(f"--quantize int8: NNCF could not quantize the {metadata['family']} graph "
                          f"({text.splitlines()[0] if text else type(error).__name__})") from error
    # Not straight over xml_path: read_model maps the .bin into memory, and writing over a mapped file
    # kills the process with SIGBUS (seen: a bus error, 0-byte files).
    stem = os.path.splitext(xml_path)[0]
    ov.save_model(quantized, stem + ".int8.xml", compress_to_fp16=False)
    del model, quantized
    os.replace(stem + ".int8.bin", stem + ".bin")
    os.replace(stem + ".int8.xml", xml_path)
    return xml_path


def _ignored_scope(nncf, family):
    """Every node outside QUANTIZED_LAYERS[family] (a name without "/<layer>/" or "/<layer>_<n>/"), or None."""
    layers = QUANTIZED_LAYERS[family]
    if layers is None:
        return None
    return nncf.IgnoredScope(patterns=[rf"^(?!.*/({'|'.join(layers)})(_\d+)?/).*"], validate=False)

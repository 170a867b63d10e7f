"""int8 post-training quantization of an OpenVINO export with NNCF, calibrated on a user's images.

Why NNCF on OpenVINO (not onnxruntime's quantize_static): its int8 convolutions run on the VNNI / AMX
kernels of the CPUs people serve on, the served graph keeps its uint8-image interface and in-graph
pre- and post-processing (only convolutions and matrix products get int8), and the result is one IR
that compile_model runs. BENCHMARKS.md, section 8, has its speed and accuracy.
"""
import os

from models.export.formats import ExportError
from models.export.mask_rcnn import PASTE_SCOPE

# Ops left in float: the detector's mask paste (its bilinear weights are exact fractions; quantized, the pasted
# masks came out empty). Matched on the node names, which keep TensorFlow's name scopes through ONNX.
KEEP_FLOAT = f".*/{PASTE_SCOPE}/.*"


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
                                  ignored_scope=nncf.IgnoredScope(patterns=[KEEP_FLOAT], validate=False))
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

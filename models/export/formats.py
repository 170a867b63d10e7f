"""Writing a serving graph (models/export/pspnet.py, mask_rcnn.py) in each runtime's format.

    saved_model  OUT/1/                  a SavedModel in TF Serving's layout (model_base_path=OUT, version 1)
    onnx         OUT/model.onnx          through Keras's export (tf2onnx)
    openvino     OUT/model.xml + .bin    OpenVINO IR, converted from that ONNX file (OpenVINO's TensorFlow
                                         frontend lacks ops the ONNX route has); int8 via quantize.py
    litert       OUT/model.tflite        at a fixed input size, LiteRT's builtin ops only (no Flex delegate)

Every format serves the same function: one uint8 RGB image "image" [H, W, 3] in, the family's named
outputs out (the serving module's docstring lists them); the detector also takes "score_threshold"
[] float32. Where a runtime can hold a default, it does: the SavedModel's serving_default and the ONNX
file (an initializer a client may override) use the export's threshold; OpenVINO and LiteRT take it
as a plain input. The SavedModel also has serve_batch ([N, H, W, 3] of equal sizes) and, for the
detector, serve_with_threshold.

Each writer raises ExportError (one line naming what blocks it) for what a format cannot take.
"""
import json
import os
import re
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from data.errors import UserError

FORMATS = ("saved_model", "onnx", "openvino", "litert")
METADATA_KEY = "keras_segmentation_reference"  # the ONNX metadata_props key / OpenVINO rt_info key of metadata()
SAVED_MODEL_VERSION = "1"
MAX_SIDE = 16384  # the largest image side an OpenVINO export takes (data.coco.pipeline.resized_size_int32's too)


class ExportError(UserError, ValueError):
    """A format, size or option a model cannot be exported with (one line saying what blocks it)."""


def artifact_path(out, fmt):
    """Where `fmt` writes its model under the folder `out` (what a runtime loads)."""
    return {"saved_model": os.path.join(out, SAVED_MODEL_VERSION), "onnx": os.path.join(out, "model.onnx"),
            "openvino": os.path.join(out, "model.xml"), "litert": os.path.join(out, "model.tflite")}[fmt]


def write(serving, out, fmt, *, input_size=None):
    """Writes `serving` in format `fmt` under the folder `out`; returns the artifact's path.

    serving: a PSPNetServing or DetectorServing. input_size: (H, W) to fix the image size (required
    for litert, optional elsewhere).
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: not one of {', '.join(FORMATS)}")
    if fmt == "litert" and input_size is None:
        raise ExportError("--format litert: LiteRT's builtin ops need a fixed image size; pass --input-size H,W")
    os.makedirs(out, exist_ok=True)
    path = artifact_path(out, fmt)
    writer = {"saved_model": _saved_model, "onnx": _onnx, "openvino": _openvino, "litert": _litert}[fmt]
    writer(serving, path, input_size)
    return path


def _saved_model(serving, path, input_size):
    import keras

    archive = keras.export.ExportArchive()
    archive.track(serving)
    signature = serving.input_signature(input_size)
    archive.add_endpoint("serve_batch", tf.function(serving.call_batch),
                         input_signature=serving.batch_signature(input_size))
    if len(signature) == 1:
        archive.add_endpoint("serving_default", tf.function(serving.call), input_signature=signature)
    else:  # the detector: serving_default at the export's threshold, serve_with_threshold for another
        default = tf.constant(serving.metadata()["score_threshold"], tf.float32)
        archive.add_endpoint("serving_default", tf.function(lambda image: serving.call(image, default)),
                             input_signature=signature[:1])
        archive.add_endpoint("serve_with_threshold", tf.function(serving.call), input_signature=signature)
    text = json.dumps(serving.metadata())
    archive.add_endpoint("metadata", tf.function(lambda: {"metadata": tf.constant(text)}), input_signature=[])
    archive.write_out(path, verbose=False)


def _onnx(serving, path, input_size, *, with_defaults=True):
    import onnx

    from models.export.onnx_loops import add_loop_passthrough_identities

    serving.export(path, format="onnx", input_signature=serving.input_signature(input_size), verbose=False)
    model = onnx.load(path)
    add_loop_passthrough_identities(model)  # else OpenVINO refuses the sliding window's loop
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(serving.metadata())
    names = [spec.name for spec in serving.input_signature(input_size)]
    if with_defaults and "score_threshold" in names:
        # An input that is also an initializer is optional in ONNX: onnxruntime uses this value unless fed.
        default = onnx.numpy_helper.from_array(np.float32(serving.metadata()["score_threshold"]),
                                               name=model.graph.input[names.index("score_threshold")].name)
        model.graph.initializer.append(default)
    onnx.save(model, path)


def _openvino(serving, path, input_size):
    import openvino as ov

    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = os.path.join(scratch, "model.onnx")
        _onnx(serving, onnx_path, input_size, with_defaults=False)  # OpenVINO has no optional inputs
        model = ov.convert_model(onnx_path)
    # Any size up to MAX_SIDE: with unbounded height and width the CPU plugin refused PSPNet-50's graph
    # ("CpuBlockedMemoryDesc ... overflow while multiplying dim and stride"); bounded, it compiles.
    image = model.input("image")
    dims = [ov.Dimension(1, MAX_SIDE) if dim.is_dynamic else dim for dim in image.get_partial_shape()]
    model.reshape({"image": ov.PartialShape(dims)})
    model.set_rt_info(json.dumps(serving.metadata()), [METADATA_KEY])
    # OpenVINO 2026.4 stores runtime_options in the IR but compile_model does not apply an
    # INFERENCE_PRECISION_HINT from there (checked): export.json records it, clients pass it.
    ov.save_model(model, path, compress_to_fp16=False)  # the default would round every weight to float16


def _litert(serving, path, input_size):
    try:
        # Keras's LiteRT export (signature "serving_default", weights frozen), LiteRT's builtin ops only: a graph
        # that needs TensorFlow ops (the Flex delegate) fails here instead of at a client.
        serving.export(path, format="litert", input_signature=serving.input_signature(input_size), verbose=False,
                       target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})
    except Exception as error:  # the converter raises ConverterError / RuntimeError with a long report
        ops = sorted(set(re.findall(r"\btf\.(\w+)\(", str(error))))
        what = f"TensorFlow ops LiteRT has no builtin for: {', '.join(ops)}" if ops else \
            str(error).strip().splitlines()[0]
        raise ExportError(f"--format litert: the {serving.metadata()['family']} graph does not convert ({what}); "
                          "use --format onnx or openvino") from error


def write_manifest(out, fmt, serving, *, input_size=None, precision="float32", quantized=None, verification=None):
    """OUT/export.json: what was exported and how (the serving metadata, format, sizes, precision, checks)."""
    manifest = {"format": fmt, "artifact": os.path.relpath(artifact_path(out, fmt), out),
                "input_size": list(input_size) if input_size else None, "precision": precision,
                "quantized": quantized, "inputs": [spec.name for spec in serving.input_signature(input_size)],
                **serving.metadata(), "verification": verification,
                "versions": {"tensorflow": tf.__version__}}
    path = os.path.join(out, "export.json")
    with open(path, "w") as f:
        json.dump(manifest, f, indent=2)
    return path


def clear(out, fmt):
    """Removes what an earlier export of `fmt` left in `out` (export.json and the artifact), for --overwrite."""
    for path in (artifact_path(out, fmt), os.path.join(out, "export.json"),
                 os.path.splitext(artifact_path(out, fmt))[0] + ".bin"):
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)

"""Running an exported model in its own runtime with nothing of this project: the code a client writes.

    run = load("onnx", "exported/model.onnx")          # or saved_model OUT/1, openvino OUT/model.xml, litert
    outputs = run(image)                               # image: uint8 [H, W, 3] RGB -> {name: NumPy array}
    outputs = run(image, score_threshold=0.7)          # the detector's threshold (default: the export's)

This file imports only NumPy and the runtime asked for (TensorFlow, onnxruntime, openvino or
ai_edge_litert), so it runs wherever they are installed. models/export/verify.py runs it as a
script in a fresh process in which the project's packages cannot be imported:

    python clients.py FORMAT ARTIFACT IMAGES.npz OUT.npz [--precision f32|bf16] [--threads N]

IMAGES.npz holds image_0, image_1, ... (uint8 [H, W, 3]) and, optionally, score_threshold; OUT.npz
gets "<i>/<output name>" for each image i.
"""
import sys

import numpy as np

FORMATS = ("saved_model", "onnx", "openvino", "litert")
PROJECT_PACKAGES = ("models", "data", "losses", "benchmarks", "train", "evaluate", "predict")


def load(fmt, path, *, precision="f32", threads=None):
    """A callable run(image, score_threshold=None) -> {output name: NumPy array} for the exported model at `path`.

    precision: OpenVINO's inference precision ("f32", or "bf16" where the export asked for it;
    OpenVINO's own default on a bfloat16 CPU is bf16). threads: the runtime's intra-op threads
    (None: its default).
    """
    loader = {"saved_model": _saved_model, "onnx": _onnx, "openvino": _openvino, "litert": _litert}[fmt]
    return loader(path, precision=precision, threads=threads)


def _saved_model(path, *, precision, threads):
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    loaded = tf.saved_model.load(path)

    def run(image, score_threshold=None):
        if score_threshold is None:
            outputs = loaded.signatures["serving_default"](image=tf.constant(image))
        else:
            outputs = loaded.signatures["serve_with_threshold"](
                image=tf.constant(image), score_threshold=tf.constant(score_threshold, tf.float32))
        return {name: value.numpy() for name, value in outputs.items()}

    return run


def _onnx(path, *, precision, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]

    def run(image, score_threshold=None):
        feed = {"image": image}
        if score_threshold is not None:
            feed["score_threshold"] = np.asarray(score_threshold, np.float32)
        return dict(zip(names, session.run(None, feed)))

    return run


def _openvino(path, *, precision, threads):
    import openvino

    config = {"INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = openvino.Core().compile_model(path, "CPU", config)
    inputs = {port.get_any_name() for port in compiled.inputs}
    default = _openvino_default_threshold(path)

    def run(image, score_threshold=None):
        feed = {"image": image}
        if "score_threshold" in inputs:
            feed["score_threshold"] = np.asarray(default if score_threshold is None else score_threshold, np.float32)
        result = compiled(feed)
        return {port.get_any_name(): np.asarray(result[port]) for port in compiled.outputs}

    return run


def _openvino_default_threshold(path):
    """The export's default score threshold, from the metadata in the IR (None for a model without one)."""
    import json

    import openvino

    model = openvino.Core().read_model(path)
    key = ["keras_segmentation_reference"]
    if not model.has_rt_info(key):
        return None
    return json.loads(model.get_rt_info(key).astype(str)).get("score_threshold")


def _litert(path, *, precision, threads):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    runner = interpreter.get_signature_runner()

    def run(image, score_threshold=None):
        feed = {"image": image}
        if score_threshold is not None:
            feed["score_threshold"] = np.asarray(score_threshold, np.float32)
        return {name: np.asarray(value) for name, value in runner(**feed).items()}

    return run


def main(argv):
    """The script: run every image of IMAGES.npz through the exported model, write OUT.npz."""
    import argparse

    for name in PROJECT_PACKAGES:  # prove the artifact needs nothing of the project: its imports fail here
        sys.modules[name] = None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("format", choices=FORMATS)
    parser.add_argument("artifact")
    parser.add_argument("images")
    parser.add_argument("out")
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    run = load(args.format, args.artifact, precision=args.precision, threads=args.threads)
    inputs = np.load(args.images)
    threshold = float(inputs["score_threshold"]) if "score_threshold" in inputs else None
    outputs = {}
    for i in range(sum(key.startswith("image_") for key in inputs)):
        for name, value in run(inputs[f"image_{i}"], threshold).items():
            outputs[f"{i}/{name}"] = value
    np.savez(args.out, **outputs)


if __name__ == "__main__":
    main(sys.argv[1:])

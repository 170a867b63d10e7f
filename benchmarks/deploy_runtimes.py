"""The exported side of benchmarks/deploy.py: one serving graph written in each format, each loaded as a
client loads it (models/export/clients.py), and the peak memory of each runtime in its own process.

A runtime is a label of RUNTIMES: (format, OpenVINO inference precision, int8). The int8 one is the
OpenVINO IR quantized with NNCF (models/export/quantize.py) on a few crops of matplotlib's photo;
its layers that stay unquantized run in float32 ("f32"), so it is int8 against float32 alone.
"""
import json
import os
import subprocess
import sys

import numpy as np

from benchmarks.harness import Result

RUNTIMES = {
    "SavedModel": ("saved_model", "f32", False),
    "onnxruntime": ("onnx", "f32", False),
    "OpenVINO fp32": ("openvino", "f32", False),
    "OpenVINO bf16": ("openvino", "bf16", False),  # OpenVINO's own default on a CPU with AVX512_BF16 / AMX
    "OpenVINO int8": ("openvino", "f32", True),
}
FLOAT32 = ("SavedModel", "onnxruntime", "OpenVINO fp32")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def threads():
    """The --threads of python -m benchmarks (BENCHMARK_THREADS), for the runtimes that take a thread count."""
    return int(os.environ.get("BENCHMARK_THREADS", os.cpu_count()))


def calibration_images(folder, size, count):
    """Writes `count` crops of grace_hopper.jpg (600 x 512), each resized to size (H, W), as PNGs; -> their paths.

    The crops (from the whole photo to its middle half, shifted) give NNCF's int8 calibration
    activations like those of the served photos at the size they are served at.
    """
    import matplotlib.cbook
    from PIL import Image

    from data.images import write_png

    os.makedirs(folder, exist_ok=True)
    paths = []
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as photo:
        photo = photo.convert("RGB")
        width, height = photo.size
        for i in range(count):
            scale = 1.0 - 0.5 * i / max(count - 1, 1)  # 1 ... 0.5 of each side
            w, h = int(width * scale), int(height * scale)
            left, top = (width - w) * (i % 3) // 2, (height - h) * ((i // 3) % 3) // 2
            crop = photo.crop((left, top, left + w, top + h)).resize((size[1], size[0]), Image.BILINEAR)
            paths.append(os.path.join(folder, f"calibration_{i}.png"))
            write_png(paths[-1], np.asarray(crop))
    return paths


_EXPORT = r"""
import json, os, shutil, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
family, checkpoint, fmt, folder, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
from benchmarks.harness import peak_rss_mib
from models.export import formats
if family == "pspnet":
    from models.export.pspnet import PSPNetServing
    from models.pspnet.inference import load_inference_model
    serving = PSPNetServing(load_inference_model(checkpoint), **args["settings"])
else:
    from benchmarks.detector import load_ours
    from models.export.mask_rcnn import DetectorServing
    serving = DetectorServing(load_ours(checkpoint), **args["settings"])
input_size = args["input_size"] and tuple(args["input_size"])
start = time.perf_counter()
done = {"path": formats.write(serving, os.path.join(folder, fmt), fmt, input_size=input_size),
        "seconds": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib()}
if args["calibration"]:  # int8: a copy of the float32 IR, quantized
    from models.export.quantize import quantize_openvino
    start = time.perf_counter()
    shutil.copytree(os.path.join(folder, fmt), os.path.join(folder, "openvino_int8"))
    try:
        done["int8_path"] = quantize_openvino(formats.artifact_path(os.path.join(folder, "openvino_int8"), fmt),
                                              args["calibration"], serving.metadata())
        done["int8_seconds"] = time.perf_counter() - start
    except Exception as error:
        done["int8_error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[-1]}"
print(json.dumps(done))
"""


def export(family, checkpoint, folder, labels, *, settings=None, calibration=(), input_size=None):
    """Exports the .keras `checkpoint` for the runtimes `labels`, a fresh process per format: (paths, info, failed).

    family: "pspnet" (PSPNetServing) or "mask_rcnn" (DetectorServing), built with `settings` (keyword
    arguments); input_size: formats.write's. Each format goes under folder/FORMAT; the int8 runtime gets
    a copy of the float32 IR (folder/openvino_int8) quantized on `calibration` (image paths). A process per
    format: tf2onnx holds several GB while converting a ResNet-50 (and keeps them), which the benchmark's
    own process then would not have. Returns {label: artifact path}, {format or "int8": {"seconds",
    "peak_rss_mib" of the exporting process}} and {label: why its export failed} (left out of the paths,
    so that the others are measured).
    """
    paths, info, failed = {}, {}, {}
    for fmt in dict.fromkeys(RUNTIMES[label][0] for label in labels):  # each format once, in order
        mine = [label for label in labels if RUNTIMES[label][0] == fmt]
        int8 = [label for label in mine if RUNTIMES[label][2]]
        args = {"settings": settings or {}, "input_size": input_size, "calibration": list(calibration) if int8 else []}
        child = subprocess.run([sys.executable, "-c", _EXPORT, family, checkpoint, fmt, folder, json.dumps(args)],
                               cwd=ROOT, capture_output=True, text=True)
        if child.returncode != 0:
            failed.update((label, _last_line(child.stderr)) for label in mine)
            continue
        done = json.loads(child.stdout.strip().splitlines()[-1])
        info[fmt] = {"seconds": done["seconds"], "peak_rss_mib": done["peak_rss_mib"]}
        paths.update((label, done["path"]) for label in mine if label not in int8)
        for label in int8:
            if "int8_error" in done:
                failed[label] = done["int8_error"]
            else:
                paths[label], info["int8"] = done["int8_path"], {"seconds": done["int8_seconds"]}
    return paths, info, failed


def _last_line(text):
    """The last line of a failed process's stderr that says something (a traceback ends with the error)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no error message"


def load(label, path):
    """run(image, score_threshold=None) -> {output: NumPy array}: the runtime `label` on the artifact at `path`.

    TensorFlow's threads are the process's (python -m benchmarks sets them before any graph runs, and
    they cannot change after); onnxruntime and OpenVINO get --threads.
    """
    from models.export import clients

    fmt, precision, _ = RUNTIMES[label]
    if fmt == "onnx":
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)  # errors only: not a warning per call on the outputs' shapes
    return clients.load(fmt, path, precision=precision, threads=None if fmt == "saved_model" else threads())


_PROBE = r"""
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
job, threads, args = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
start = time.perf_counter()
import numpy as np
image = np.load(args["image"])
if job == "client":  # models/export/clients.py alone, as a client runs it: nothing of the project imported
    sys.path.insert(0, os.path.join(os.getcwd(), "models", "export"))
    import clients
    run = clients.load(args["format"], args["path"], precision=args["precision"], threads=threads)
    run(image, args.get("score_threshold"))
elif job in ("torch_pspnet", "torchvision"):
    import torch
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    if job == "torchvision":
        from benchmarks import torchvision_detector as tv
        tv.detect(tv.load(args["path"]), image)
    else:
        from benchmarks.torch_pspnet import load_semseg, segment
        model = load_semseg(args["path"], args["classes"], args["width"])
        segment(model, image, args["mean"], args["std"], bfloat16=args["bfloat16"])
else:
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    if job == "keras_pspnet":
        from models.pspnet.inference import load_inference_model
        from models.pspnet.prediction import predict_image
        model = load_inference_model(args["path"])
        if args["precision"] != "float32":
            from models.precision import with_precision
            model = with_precision(model, args["precision"])
        predict_image(model, image)
    else:
        from benchmarks.detector import load_ours
        from models.mask_rcnn.transform import detect
        detect(load_ours(args["path"]), [image], score_threshold=args["score_threshold"])[0]["masks"].dense()
from benchmarks.harness import peak_rss_mib
print(json.dumps({"peak_rss_mib": peak_rss_mib(), "seconds": time.perf_counter() - start}))
"""


def probe(job, **args):
    """Runs one job of _PROBE in a fresh process on --threads threads; -> {"peak_rss_mib", "seconds"} or {"error"}.

    job: "client" (format, path, precision[, score_threshold]), "keras_pspnet" (path, precision),
    "keras_detector" (path, score_threshold), "torch_pspnet" (path, classes, width, mean, std, bfloat16) or
    "torchvision" (path); args["image"]: a .npy file of the uint8 [H, W, 3] image it runs once.
    """
    done = subprocess.run([sys.executable, "-c", _PROBE, job, str(threads()), json.dumps(args)], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": _last_line(done.stderr)}
    return json.loads(done.stdout.strip().splitlines()[-1])


def client_probe(label, path, image_path, score_threshold=None):
    """probe() of the exported runtime `label` on the artifact at `path`."""
    fmt, precision, _ = RUNTIMES[label]
    args = {"format": fmt, "path": path, "precision": precision, "image": image_path}
    if score_threshold is not None:
        args["score_threshold"] = score_threshold
    return probe("client", **args)


def memory_rows(family, size, probes, reference):
    """Result rows of peak RSS: probes {label: probe result}; ratio: peak / the `reference` label's."""
    base = probes[reference].get("peak_rss_mib")
    rows = []
    for label, found in probes.items():
        name = f"peak RSS: {family} [{label}]"
        if "error" in found:
            rows.append(Result(name, size, float("nan"), note=f"failed: {found['error']}"))
            continue
        rows.append(Result(name, size, found["seconds"], throughput=f"{found['peak_rss_mib']:.0f} MiB",
                           ratio=found["peak_rss_mib"] / base if base else None,
                           note=f"fresh process: runtime + load + one image; ratio: / {reference}'s"))
    return rows

"""Serving both models (issue 22): every runtime an export runs in, next to Keras and PyTorch, in one run.

PSPNet-50 (19 classes, semseg's layout, no aux head): hszhao/semseg's model in plain torch
(benchmarks/torch_pspnet.py) with random weights and BatchNorm statistics, saved as semseg saves it and
converted with `python -m models.convert semseg-pspnet`, so every side computes with the same weights.
On matplotlib's photo resized to 713 x 713 (uint8 in, class map out, each side's whole path):
- Keras float32: models.pspnet.prediction.predict_image (what predict.py runs), and Keras bfloat16
  (models.precision.with_precision);
- the export (models.export.pspnet.PSPNetServing, whole image) in each runtime of
  benchmarks.deploy_runtimes.RUNTIMES, loaded with models/export/clients.py: SavedModel, onnxruntime,
  OpenVINO fp32, bf16 and int8 (NNCF, calibrated on 8 crops of the photo). Exported at the image's size
  (--input-size 713,713), what a server for one camera would do (any-size exports work too: formats.py
  bounds OpenVINO's dims, without which its CPU plugin refused PSPNet-50's graph);
- semseg's PyTorch model, float32 and under torch.autocast("cpu", dtype=torch.bfloat16).
Each row's note gives the share of pixels whose class agrees with Keras float32 (accuracy beside speed).
Then a 1024 x 2048 image with 713 windows (stride 476, 8 windows, no flip): Keras against the fastest
float32 export runtime, exported with mode="sliding".

The detector (benchmarks/detector.py's converted torchvision maskrcnn_resnet50_fpn and photo at
800 x 1333): Keras (models.mask_rcnn.transform.detect, masks pasted dense), the DetectorServing export
in onnxruntime, OpenVINO fp32 and int8, against torchvision's eager inference. All keep the detections
scoring >= 0.05 (torchvision's box_score_thresh) and paste all their masks; the note counts how many of
Keras's each matches (same class, box IoU >= 0.5).

Exports run in a fresh process per format (benchmarks.deploy_runtimes.export: converting PSPNet-50 to
ONNX peaks at 9 GiB any-size, 18 GiB at 713 x 713, and keeps most of it); a runtime whose export fails
is a row saying why. Times: each side's median, all sides called in turn
(benchmarks.harness.alternating_median_times) on the --threads threads (onnxruntime's intra-op threads,
OpenVINO's INFERENCE_NUM_THREADS, torch's). Peak memory: one fresh process per runtime loading its
artifact and running one image (benchmarks.deploy_runtimes.probe).
--quick: a PSPNet-50 at base width 4 on 97 x 97 and only the OpenVINO export (each export takes
10-40 s even for a tiny model), no sliding export, no detector, memory only of the processes without
TensorFlow.
"""
import importlib.util
import os

import numpy as np

from benchmarks.deploy_runtimes import (FLOAT32, RUNTIMES, calibration_images, client_probe, export, load,
                                       memory_rows, probe)
from benchmarks.detector import resized_photo
from benchmarks.harness import Result, alternating_median_times

NUM_CLASSES = 19
SCORE_THRESHOLD = 0.05  # torchvision's box_score_thresh: every runtime keeps (and pastes) the same detections
QUICK_LABELS = ("OpenVINO fp32", "OpenVINO bf16", "OpenVINO int8")
TARGETS = {"fp32": "<= 0.8", "int8": "<= 0.5", "bf16": "<= 0.6", "detector": "<= 0.5"}


def run(quick=False):
    import tempfile

    _check_installed()
    with tempfile.TemporaryDirectory(prefix="deploy_benchmark_") as folder:  # ~1 GB of artifacts at full size
        results = run_pspnet(quick, folder)
        return results if quick else results + run_detector(folder)


def _check_installed():
    from data.errors import UserError

    missing = [name for name in ("torch", "tf2onnx", "onnxruntime", "openvino", "nncf")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--only deploy needs {', '.join(missing)}: pip install -e '.[deploy,test]'")


def pspnet_models(folder, width):
    """(torch SemsegPSPNet-50 in eval mode, its semseg .pth path, the converted .keras path) at base width `width`."""
    from benchmarks import torch_pspnet
    from models.convert import command as convert

    reference = torch_pspnet.randomize(torch_pspnet.SemsegPSPNet(50, classes=NUM_CLASSES, width=width, aux=False), 0)
    torch_path, keras_path = os.path.join(folder, "pspnet.pth"), os.path.join(folder, "pspnet.keras")
    torch_pspnet.save_semseg(reference, torch_path)
    convert.main(["semseg-pspnet", torch_path, keras_path, "--quiet"])
    return reference, torch_path, keras_path


def run_pspnet(quick, folder):
    """The PSPNet rows (module docstring); artifacts go to `folder`."""
    from benchmarks.torch_pspnet import segment
    from data.normalization import INPUT_MEAN, INPUT_STD
    from models.precision import with_precision
    from models.pspnet.inference import load_inference_model
    from models.pspnet.prediction import predict_image

    width, side = (4, 97) if quick else (64, 713)
    labels = QUICK_LABELS if quick else tuple(RUNTIMES)
    reference, torch_path, keras_path = pspnet_models(folder, width)
    model = load_inference_model(keras_path)
    image = resized_photo((side, side))
    calibration = calibration_images(os.path.join(folder, "calibration"), (side, side), 2 if quick else 8)
    artifacts, written, failed = export("pspnet", keras_path, os.path.join(folder, "pspnet"), labels,
                                        calibration=calibration, input_size=(side, side))

    bfloat16 = with_precision(model, "bfloat16")
    runs = {"Keras float32": lambda: predict_image(model, image),
            "Keras bfloat16": lambda: predict_image(bfloat16, image)}
    for label, path in artifacts.items():
        runs[label] = (lambda run: lambda: run(image)["class_ids"])(load(label, path))
    mean, std = list(INPUT_MEAN), list(INPUT_STD)
    runs["PyTorch float32"] = lambda: segment(reference, image, mean, std)
    runs["PyTorch bf16 autocast"] = lambda: segment(reference, image, mean, std, bfloat16=True)

    outputs, failed = _first_calls(runs, failed, np.asarray)
    times = dict(zip(runs, alternating_median_times(list(runs.values()), warmup=0 if quick else 1,
                                                    repeats=1 if quick else 3)))
    keras = times["Keras float32"]
    size = f"1x{side}x{side}" + (f" r50/w{width}" if quick else "")
    results = []
    for label, seconds in times.items():
        agreement = np.mean(outputs[label] == outputs["Keras float32"])
        note = f"class agrees with Keras float32 on {100 * agreement:.2f}% of pixels" + _written(label, written)
        results.append(Result(f"pspnet [{label}]", size, seconds, throughput=f"{1 / seconds:.2f} img/s",
                              ratio=seconds / keras, note=note + "; ratio: / Keras float32"))
    results += _failed_rows("pspnet", size, failed) + _pspnet_targets(times, size)
    if quick:
        results.append(_keras_sliding(model, predict_image, (96, 160), 65))
    else:
        results += _sliding(model, keras_path, predict_image, folder,
                            sorted((label for label in FLOAT32 if label in times), key=times.get))
    results += _pspnet_memory(quick, folder, image, artifacts, keras_path, torch_path, width, mean, std, size)
    return results


def _pspnet_targets(times, size):
    """The issue's three PSPNet targets: the fastest of each kind of runtime / Keras float32."""
    keras = times["Keras float32"]
    rows = []
    for kind, labels in (("fp32", FLOAT32), ("int8", ("OpenVINO int8",)), ("bf16", ("Keras bfloat16",
                                                                                   "OpenVINO bf16"))):
        present = [label for label in labels if label in times]
        if not present:
            continue
        fastest = min(present, key=times.get)
        rows.append(Result(f"pspnet fastest {kind} / Keras float32", size, times[fastest],
                           ratio=times[fastest] / keras, target=TARGETS[kind], note=fastest))
    return rows


def _keras_sliding(model, predict_image, size, crop):
    """--quick's sliding-window row: Keras alone (each export takes longer than the rest of --quick)."""
    image = resized_photo(size)
    seconds = alternating_median_times([lambda: predict_image(model, image, mode="sliding", crop_size=crop)],
                                       repeats=1)[0]
    return Result(f"pspnet sliding {crop} [Keras float32]", f"1x{size[0]}x{size[1]}", seconds,
                  throughput=f"{1 / seconds:.3f} img/s", note="no flip")


def _sliding(model, keras_path, predict_image, folder, labels, size=(1024, 2048), crop=713):
    """Keras's sliding window against the fastest float32 runtime's export of it (mode="sliding").

    labels: the float32 runtimes, fastest first: the first whose export of the sliding graph works is timed.
    """
    image = resized_photo(size)
    shape = f"1x{size[0]}x{size[1]}"
    failed_rows = []
    for label in labels:
        artifacts, written, failed = export("pspnet", keras_path, os.path.join(folder, "pspnet_sliding"), [label],
                                            settings={"mode": "sliding", "crop_size": crop}, input_size=size)
        failed_rows += _failed_rows(f"pspnet sliding {crop}", shape, failed)
        if artifacts:
            break
    else:
        return failed_rows
    served = load(label, artifacts[label])
    runs = {"Keras float32": lambda: predict_image(model, image, mode="sliding", crop_size=crop),
            label: lambda: served(image)["class_ids"]}
    outputs, failed = _first_calls(runs, {}, np.asarray)
    if failed:
        return failed_rows + _failed_rows(f"pspnet sliding {crop}", shape, failed)
    agreement = np.mean(outputs["Keras float32"] == outputs[label])
    keras, exported = alternating_median_times(list(runs.values()), warmup=0, repeats=2)
    return failed_rows + [
        Result(f"pspnet sliding {crop} [Keras float32]", shape, keras, throughput=f"{1 / keras:.3f} img/s",
               note="8 windows, stride 476, no flip"),
        Result(f"pspnet sliding {crop} [{label}]", shape, exported, throughput=f"{1 / exported:.3f} img/s",
               ratio=exported / keras, target=TARGETS["fp32"],
               note=f"the fastest float32 export above that exports it; class agrees with Keras on "
                    f"{100 * agreement:.2f}% of pixels{_written(label, written)}; ratio: / Keras"),
    ]


def _pspnet_memory(quick, folder, image, artifacts, keras_path, torch_path, width, mean, std, size):
    """Peak RSS of each PSPNet runtime in its own process; --quick: those without TensorFlow only."""
    image_path = os.path.join(folder, "pspnet_image.npy")
    np.save(image_path, image)
    torch_args = dict(path=torch_path, classes=NUM_CLASSES, width=width, mean=mean, std=std, image=image_path)
    probes = {"PyTorch float32": probe("torch_pspnet", bfloat16=False, **torch_args)}
    if not quick:
        probes["PyTorch bf16 autocast"] = probe("torch_pspnet", bfloat16=True, **torch_args)
        for precision in ("float32", "bfloat16"):
            probes[f"Keras {precision}"] = probe("keras_pspnet", path=keras_path, precision=precision,
                                                 image=image_path)
    for label, path in artifacts.items():
        probes[label] = client_probe(label, path, image_path)
    return memory_rows("pspnet", size, probes, "PyTorch float32" if quick else "Keras float32")


def run_detector(folder):
    """The detector's rows at 800 x 1333 (full runs only): see the module docstring."""
    from benchmarks import torchvision_detector as tv
    from benchmarks.detector import FULL_SIZE, converted_models, load_ours, photo
    from models.export.verify import detector_reference, match_detections

    torch_path, keras_path = converted_models(False)
    image = photo(False)
    model = load_ours(keras_path)
    labels = ("onnxruntime", "OpenVINO fp32", "OpenVINO int8")
    calibration = calibration_images(os.path.join(folder, "detector_calibration"), FULL_SIZE, 4)
    artifacts, written, failed = export("mask_rcnn", keras_path, os.path.join(folder, "detector"), labels,
                                        calibration=calibration)
    keras = detector_reference(model, short_side=800, long_side=1333, score_threshold=SCORE_THRESHOLD)
    torchvision = tv.load(torch_path)
    runs = {"Keras": lambda: keras(image)}
    for label, path in artifacts.items():
        runs[label] = (lambda run: lambda: _served_detections(run(image, SCORE_THRESHOLD)))(load(label, path))
    runs["torchvision"] = lambda: _torchvision_detections(tv.detect(torchvision, image))

    outputs, failed = _first_calls(runs, failed)
    times = dict(zip(runs, alternating_median_times(list(runs.values()), repeats=3)))
    size = f"1x{FULL_SIZE[0]}x{FULL_SIZE[1]} resnet50"
    results = []
    for label, seconds in times.items():
        match = match_detections(outputs[label], outputs["Keras"])
        note = (f"{match['served']} detections, {match['matched']} of Keras's {match['reference']} matched "
                f"(mask IoU {match['mask_iou']:.3f})" + _written(label, written))
        results.append(Result(f"detector [{label}]", size, seconds, throughput=f"{1 / seconds:.2f} img/s",
                              ratio=seconds / times["torchvision"], note=note + "; ratio: / torchvision"))
    results += _failed_rows("detector", size, failed)
    fastest = min((label for label in times if label != "torchvision"), key=times.get)
    results.append(Result("detector fastest / torchvision", size, times[fastest],
                          ratio=times[fastest] / times["torchvision"], target=TARGETS["detector"], note=fastest))

    image_path = os.path.join(folder, "detector_image.npy")
    np.save(image_path, image)
    probes = {"Keras": probe("keras_detector", path=keras_path, score_threshold=SCORE_THRESHOLD, image=image_path)}
    for label, path in artifacts.items():
        probes[label] = client_probe(label, path, image_path, SCORE_THRESHOLD)
    probes["torchvision"] = probe("torchvision", path=torch_path, image=image_path)
    return results + memory_rows("detector", size, probes, "torchvision")


def _first_calls(runs, failed, convert=lambda outputs: outputs):
    """Calls each of runs {label: fn} once (tracing, compiling: untimed); -> ({label: convert(output)}, failed).

    A runtime that raises is removed from `runs` and added to `failed` {label: why}, so that the others
    are still measured (an export can convert and yet not run).
    """
    outputs, failed = {}, dict(failed)
    for label, fn in list(runs.items()):
        try:
            outputs[label] = convert(fn())
        except Exception as error:  # noqa: BLE001  each runtime raises its own types
            del runs[label]
            lines = [line for line in str(error).strip().splitlines() if line.strip()]
            failed[label] = f"runs but fails: {type(error).__name__}: {lines[-1][:300] if lines else ''}"
    return outputs, failed


def _written(label, written):
    """"; onnx written in 41 s (peak 9.1 GiB)" for an exported runtime's note ("" for the others)."""
    if label not in RUNTIMES:
        return ""
    fmt, _, int8 = RUNTIMES[label]
    return (f"; {fmt} written in {written[fmt]['seconds']:.0f} s (peak {written[fmt]['peak_rss_mib'] / 1024:.1f} "
            "GiB)" + (f", int8 in {written['int8']['seconds']:.0f} s" if int8 else ""))


def _failed_rows(family, size, failed):
    """A row per runtime that failed to export or to run (no time): failed {label: why}."""
    return [Result(f"{family} [{label}]", size, float("nan"), note=f"failed: {message}")
            for label, message in failed.items()]


def _served_detections(outputs):
    """An export's outputs, cut to its num_detections (verify.match_detections' form)."""
    count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
    return {key: np.asarray(outputs[key])[:count] for key in ("boxes", "class_ids", "scores", "masks")}


def _torchvision_detections(found):
    """torchvision's output dict in verify.match_detections' form (masks thresholded at 0.5, as pasted)."""
    return {"boxes": found["boxes"].numpy(), "class_ids": found["labels"].numpy(), "scores": found["scores"].numpy(),
            "masks": found["masks"][:, 0].numpy() >= 0.5}

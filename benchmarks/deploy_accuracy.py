"""What deploying costs in accuracy: float32 vs bfloat16 vs int8, in Keras and in OpenVINO, measured through
the official tools as a user would run them.

Full mode needs the two demo runs (`make demo`, `make demo-maskrcnn`: runs/pspnet_demo/best.keras,
runs/maskrcnn_demo/best.keras) and the built-in samples they trained on (samples/); a missing one gives a
"skipped" row.
- PSPNet, mIoU on samples/cityscapes val: Keras float32 / bfloat16 from `evaluate.py --precision` (its
  metrics.json); OpenVINO from `python -m models.export --format openvino` (float32 IR, run at f32 and at
  bf16) and `--quantize int8 --calibration` the sample's train images, each run with models/export/clients.py
  on every val image, its label_ids written as evaluate.py names them (NAME_pred_labelIds.png) and scored by
  the official cityscapesScripts evaluator (csEvalPixelLevelSemanticLabeling), which also scores evaluate.py's
  own float32 folder: the same evaluator on both sides.
- Mask R-CNN, bbox and segm AP on samples/coco val: Keras from `evaluate.py --model mask_rcnn --precision`;
  OpenVINO (f32, bf16, int8 as above) through clients.py at evaluate.py's own settings (its metrics.json's
  score threshold, detection count and box rounding), written as COCO results and scored by COCOeval
  (data.coco.results, which evaluate.py uses).
- Argmax agreement on real photos (matplotlib's grace_hopper.jpg, sklearn's china.jpg and flower.jpg): the
  share of pixels whose class equals Keras float32's (predict.py's class map), for each other runtime.
--quick: a random tiny PSPNet (resnet18, base width 4) on a generated 2-image sample and two photo crops, no
detector: a smoke check of the same path, its figures meaningless.

Accuracy only: `seconds` is 0 (BENCHMARKS.md's deploy area has the speeds). ratio: the figure over Keras
float32's (mIoU, AP), or the agreement share.
"""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from benchmarks.harness import Result, machine_description

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PSPNET_DEMO = "runs/pspnet_demo/best.keras"  # relative to the repository root, where make demo writes them
DETECTOR_DEMO = "runs/maskrcnn_demo/best.keras"
CITYSCAPES_SAMPLE, COCO_SAMPLE = "samples/cityscapes", "samples/coco"
# OpenVINO runs: (row label, export folder under the work dir, clients.py precision)
OPENVINO_RUNS = (("OpenVINO float32", "ov", "f32"), ("OpenVINO bf16", "ov", "bf16"), ("OpenVINO int8", "ov8", "f32"))


def run(quick=False):
    with tempfile.TemporaryDirectory(prefix="deploy_accuracy_") as work:
        rows = [Result("deploy_accuracy machine", "", 0.0, note=machine_description())]
        if quick:
            checkpoint, data = _tiny_pspnet(work)
            return rows + _pspnet_rows(checkpoint, data, work, name="pspnet[tiny]", quick=True)
        for checkpoint, data, command in ((PSPNET_DEMO, CITYSCAPES_SAMPLE, "make demo"),
                                          (DETECTOR_DEMO, COCO_SAMPLE, "make demo-maskrcnn")):
            missing = [p for p in (checkpoint, data) if not os.path.exists(os.path.join(REPO, p))]
            if missing:
                rows.append(Result(f"deploy_accuracy {checkpoint}", "", 0.0,
                                   note=f"skipped: {', '.join(missing)} missing (run `{command}` first)"))
            elif checkpoint == PSPNET_DEMO:
                rows += _pspnet_rows(os.path.join(REPO, checkpoint), os.path.join(REPO, data), work,
                                     name="pspnet[demo]", quick=False)
            else:
                rows += _detector_rows(os.path.join(REPO, checkpoint), os.path.join(REPO, data), work)
        return rows


def _tiny_pspnet(work):
    """(checkpoint, data root) for --quick: a random resnet18/w4 PSPNet and a generated 1 + 2 image sample."""
    from data.samples.cityscapes import write_cityscapes_sample
    from models import build_pspnet

    checkpoint, data = os.path.join(work, "tiny.keras"), os.path.join(work, "cityscapes")
    build_pspnet(19, backbone="resnet18", base_width=4, aux=False).save(checkpoint)
    write_cityscapes_sample(data, num_train=1, num_val=2, size=(64, 128), seed=0)
    return checkpoint, data


def _tool(function, *args):
    """function(*args) (a command's main(argv)) in this process, its output kept back unless it fails."""
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            return function(*args)
    except BaseException as error:  # SystemExit of a user error included: show what the command said
        print(log.getvalue()[-4000:], file=sys.stderr)
        lines = [line for line in log.getvalue().splitlines() if line.strip()]
        said = error.code if isinstance(error, SystemExit) and isinstance(error.code, str) else None
        error.add_note(said or (lines[-1] if lines else repr(error)))  # SystemExit(message): a user error
        raise


def _evaluate(argv):
    """evaluate.py ARGV --quiet as a user runs it (a package never imports a command); its metrics.json."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, os.path.join(root, "evaluate.py"), *argv, "--quiet"], cwd=root,
                          capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise RuntimeError(f"evaluate.py {' '.join(argv)}: {lines[-1] if lines else done.returncode}")
    with open(os.path.join(argv[argv.index("--out") + 1], "metrics.json")) as f:
        return json.load(f)


def _export(checkpoint, out, calibration, *extra, quick=False):
    """OUT/ov (float32 IR) and OUT/ov8 (int8) from `python -m models.export --format openvino` (and
    `--quantize int8 --calibration`). Returns {folder: model.xml, or "failed: " + the command's last line}.
    quick: no verification, and the int8 IR is the command's quantize step on a copy of the float32 IR
    (not a second export)."""
    from models.export import command
    from models.export.quantize import quantize_openvino

    ov, ov8 = os.path.join(out, "ov"), os.path.join(out, "ov8")
    flags = ["--format", "openvino", *extra] + (["--no-verify"] if quick else [])
    _tool(command.main, [checkpoint, ov, *flags])
    paths = {"ov": os.path.join(ov, "model.xml"), "ov8": os.path.join(ov8, "model.xml")}
    try:
        if quick:
            from data.images import find_images

            shutil.copytree(ov, ov8)
            with open(os.path.join(ov8, "export.json")) as f:
                metadata = json.load(f)
            _tool(quantize_openvino, paths["ov8"], find_images([calibration]), metadata)
        else:
            _tool(command.main, [checkpoint, ov8, *flags, "--quantize", "int8", "--calibration", calibration])
    except (Exception, SystemExit) as error:  # int8 is the step that may fail on a graph: a row says so
        paths["ov8"] = "failed: " + (error.__notes__[-1] if getattr(error, "__notes__", None) else repr(error))
    return paths


def _clients(paths):
    """{row label: run(image, score_threshold=None), or the export's "failed: ..."} for OPENVINO_RUNS,
    loaded with models/export/clients.py."""
    from models.export import clients

    threads = int(os.environ.get("BENCHMARK_THREADS", 0)) or None
    return {label: paths[folder] if paths[folder].startswith("failed") else
            clients.load("openvino", paths[folder], precision=precision, threads=threads)
            for label, folder, precision in OPENVINO_RUNS}


# ---------------------------------------------------------------- PSPNet


def _pspnet_rows(checkpoint, data, work, *, name, quick):
    from data.cityscapes import find_examples
    from data.images import read_image, write_png

    examples = find_examples(data, "val", with_labels=False)
    size = f"{len(examples)} val images"
    keras_iou, rows = {}, []
    for precision in ("float32", "bfloat16"):
        out = os.path.join(work, f"psp_{precision}")
        keras_iou[precision] = _evaluate(["--checkpoint", checkpoint, "--data", data, "--out", out,
                                          "--precision", precision])["mIoU"]
        rows.append(_row(f"{name} mIoU Keras {precision}", size, keras_iou[precision], keras_iou["float32"],
                         "mIoU", f"evaluate.py --precision {precision}, its metrics.json"))
    official = _cityscapes_official(data, os.path.join(work, "psp_float32"), work)
    rows.append(_row(f"{name} mIoU Keras float32 (official)", size, official, keras_iou["float32"], "mIoU",
                     "csEvalPixelLevelSemanticLabeling on evaluate.py's folder"))
    exported = _export(checkpoint, os.path.join(work, "psp_export"), os.path.join(data, "leftImg8bit", "train"),
                       quick=quick)
    runners = _clients(exported)
    for label, runner in runners.items():
        if isinstance(runner, str):
            rows.append(Result(f"{name} mIoU {label}", size, 0.0, note=runner))
            continue
        out = os.path.join(work, "psp_" + label.replace(" ", "_"))
        os.makedirs(out)
        for example in examples:
            write_png(os.path.join(out, f"{example.id}_pred_labelIds.png"),
                      runner(read_image(example.image_path))["label_ids"])
        miou = _cityscapes_official(data, out, work)
        rows.append(_row(f"{name} mIoU {label} (official)", size, miou, keras_iou["float32"], "mIoU",
                         "clients.py -> NAME_pred_labelIds.png -> csEvalPixelLevelSemanticLabeling"))
    return rows + _photo_rows(checkpoint, runners, name=name, quick=quick)


def _cityscapes_official(data, results, work):
    """mIoU (averageScoreClasses) of the official evaluator run on the NAME_pred_labelIds.png in `results`."""
    export = tempfile.mkdtemp(dir=work)
    env = {**os.environ, "CITYSCAPES_DATASET": os.path.abspath(data), "CITYSCAPES_RESULTS": os.path.abspath(results),
           "CITYSCAPES_EXPORT_DIR": export}
    command = os.path.join(os.path.dirname(sys.executable), "csEvalPixelLevelSemanticLabeling")  # its console script
    done = subprocess.run([command], env=env, capture_output=True, text=True)
    if done.returncode != 0 or "multiple predictions" in done.stdout:
        raise RuntimeError(f"csEvalPixelLevelSemanticLabeling failed on {results}:\n{done.stdout[-2000:]}"
                           f"{done.stderr[-2000:]}")
    with open(os.path.join(export, "resultPixelLevelSemanticLabeling.json")) as f:
        return float(json.load(f)["averageScoreClasses"])


def photos(quick):
    """[(name, uint8 [H, W, 3])]: two crops of grace_hopper.jpg (quick), else it whole and sklearn's two photos."""
    from matplotlib import cbook

    from data.images import read_image
    from models.export.verify import sample_photos

    if quick:
        return list(zip(("grace_hopper crop 1", "grace_hopper crop 2"), sample_photos()))
    found = [("grace_hopper", read_image(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))))]
    try:
        from sklearn.datasets import load_sample_images

        sample = load_sample_images()
        found += [(os.path.splitext(os.path.basename(f))[0], np.asarray(image, np.uint8))
                  for f, image in zip(sample.filenames, sample.images)]
    except ImportError:  # scikit-learn is not one of the project's dependencies
        pass
    return found


def _photo_rows(checkpoint, runners, *, name, quick):
    """Argmax agreement with Keras float32 (predict.py's class map) on real photos, for each other runtime."""
    from models.pspnet.inference import load_inference_model
    from models.pspnet.prediction import predict_image

    images = photos(quick)
    reference = load_inference_model(checkpoint)
    expected = [predict_image(reference, rgb) for _, rgb in images]
    bfloat16 = load_inference_model(checkpoint, precision="bfloat16")
    served = {"Keras bfloat16": lambda rgb: predict_image(bfloat16, rgb),
              **{label: (lambda rgb, r=runner: r(rgb)["class_ids"]) for label, runner in runners.items()
                 if not isinstance(runner, str)}}
    size = f"{len(images)} photos"
    rows = []
    for label, predict in served.items():
        equal = [np.asarray(predict(rgb)) == want for (_, rgb), want in zip(images, expected)]
        share = float(sum(e.sum() for e in equal) / sum(e.size for e in equal))
        per_photo = ", ".join(f"{photo} {e.mean():.2%}" for (photo, _), e in zip(images, equal))
        rows.append(Result(f"{name} agreement {label}", size, 0.0, ratio=share,
                           note=f"{share:.3%} of pixels equal Keras float32's ({per_photo})"))
    return rows


def _row(name, size, value, baseline, metric, how=""):
    return Result(name, size, 0.0, ratio=value / baseline if baseline else None,
                  note=f"{metric} {value:.4f}" + (f"; {how}" if how else ""))


# ---------------------------------------------------------------- Mask R-CNN


class _DatasetIds:
    """The served detector's class_ids are the dataset's category ids already: data.coco.results's
    `categories` that maps them to themselves."""

    @staticmethod
    def to_coco(class_ids):
        return np.asarray(class_ids)


def _detector_rows(checkpoint, data, work):
    from pycocotools.coco import COCO

    ground_truth_file = os.path.join(data, "annotations", "instances_val2017.json")
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(ground_truth_file)
    size = f"{len(ground_truth.imgs)} val images"
    keras, rows = {}, []
    for precision in ("float32", "bfloat16"):
        keras[precision] = _evaluate(["--model", "mask_rcnn", "--checkpoint", checkpoint, "--data", data,
                                      "--out", os.path.join(work, f"det_{precision}"), "--precision", precision])
        rows.append(_ap_row(f"maskrcnn[demo] AP Keras {precision}", size, keras[precision], keras["float32"],
                            f"evaluate.py --model mask_rcnn --precision {precision}"))
    settings = keras["float32"]["settings"]  # what evaluate.py kept for this checkpoint
    if settings["mask_rule"] != "at_least":  # the served masks are probability >= 0.5
        raise RuntimeError(f"evaluate.py's mask rule {settings['mask_rule']} is not the served graph's (at_least)")
    exported = _export(checkpoint, os.path.join(work, "det_export"), os.path.join(data, "train2017"),
                       "--model", "mask_rcnn")
    for label, runner in _clients(exported).items():
        if isinstance(runner, str):
            rows.append(Result(f"maskrcnn[demo] AP {label}", size, 0.0, note=runner))
            continue
        predictions = []
        try:
            for image_id in sorted(ground_truth.imgs):
                path = os.path.join(data, "val2017", ground_truth.imgs[image_id]["file_name"])
                found = detect_file(runner, path, settings["score_threshold"], settings["detections_per_image"])
                predictions.append({"image_id": image_id, **found})
        except RuntimeError as error:  # the runtime refusing an image: a row says which and why
            rows.append(Result(f"maskrcnn[demo] AP {label}", size, 0.0, note=f"failed on {path}: "
                               f"{[line for line in str(error).splitlines() if line.strip()][-1]}"))
            continue
        metrics = coco_metrics(ground_truth, predictions, settings)
        rows.append(_ap_row(f"maskrcnn[demo] AP {label}", size, metrics, keras["float32"],
                            f"clients.py -> COCO results -> COCOeval; {sum(len(p['scores']) for p in predictions)} "
                            "detections"))
    return rows


def detect_file(runner, path, score_threshold, detections_per_image):
    """One image file through a served detector -> a prediction as data.coco.results reads it (boxes y1, x1, y2, x2)."""
    from data.images import read_image

    out = runner(read_image(path), score_threshold=score_threshold)
    keep = slice(0, min(int(out["num_detections"]), detections_per_image))
    return {"boxes": np.asarray(out["boxes"])[keep][:, [1, 0, 3, 2]], "class_ids": out["class_ids"][keep],
            "scores": out["scores"][keep], "masks": out["masks"][keep]}


def coco_metrics(ground_truth, predictions, settings):
    """COCOeval's bbox_* and segm_* of the predictions, with evaluate.py's box rounding and scored images."""
    from data.coco.results import bbox_results, evaluate_results, segm_results

    image_ids = [p["image_id"] for p in predictions] if settings["scored_images"] == "evaluated" else None
    metrics = evaluate_results(ground_truth, bbox_results(predictions, _DatasetIds, decimals=settings["box_decimals"]),
                               "bbox", image_ids=image_ids)
    metrics.update(evaluate_results(ground_truth, segm_results(predictions, _DatasetIds), "segm",
                                    image_ids=image_ids))
    return metrics


def _ap_row(name, size, metrics, baseline, how=""):
    note = f"bbox AP {metrics['bbox_AP']:.4f}, segm AP {metrics['segm_AP']:.4f} (AP50 {metrics['segm_AP50']:.4f})"
    return Result(name, size, 0.0, ratio=metrics["segm_AP"] / baseline["segm_AP"] if baseline["segm_AP"] else None,
                  note=note + (f"; {how}" if how else "") + "; ratio: segm AP / Keras float32's")

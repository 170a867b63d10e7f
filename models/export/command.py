"""Export a checkpoint for serving: SavedModel, ONNX, OpenVINO or LiteRT, raw uint8 images in.

    python -m models.export CHECKPOINT OUT [--model pspnet|mask_rcnn] [--format saved_model|onnx|openvino|litert]
        [--input-size H,W] [--precision float32|bfloat16] [--quantize int8 --calibration IMAGE_DIR] [--no-verify]

CHECKPOINT: any .keras file the project writes (a training run's, or one converted from torchvision,
semseg or mmsegmentation). OUT: a folder; it gets the artifact (models/export/formats.py) and
export.json. Unless --no-verify, the artifact is then run in its own runtime in a fresh process on two
photos and compared with predict.py (models/export/verify.py).
"""
import os

from data import cli
from data.errors import OutputExistsError, UsageError
from models.export.formats import FORMATS, ExportError, artifact_path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
PRECISIONS = ("float32", "bfloat16")


def build_parser():
    psp, mrcnn = ("pspnet",), ("mask_rcnn",)
    parser = cli.ArgumentParser(prog="python -m models.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help=".keras file written by train.py or models.convert")
    parser.add_argument("out", help="folder for the exported model and its export.json")
    parser.add_argument("--model", choices=["pspnet", "mask_rcnn"], default="pspnet",
                        help="the model family of CHECKPOINT (default: pspnet)")
    parser.add_argument("--format", choices=FORMATS, default="saved_model",
                        help="saved_model (OUT/1, TF Serving's layout), onnx (OUT/model.onnx), openvino "
                             "(OUT/model.xml), litert (OUT/model.tflite, needs --input-size)")
    parser.add_argument("--input-size", type=cli.parse_pair, default=None,
                        help="fix the image size H,W (e.g. 1024,2048); default: any size (LiteRT needs one)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="bfloat16: saved_model computes in bfloat16 (float32 weights); openvino records it "
                             "for its CPU plugin (clients pass INFERENCE_PRECISION_HINT bf16)")
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="post-training int8 quantization with NNCF (--format openvino, needs --calibration)")
    parser.add_argument("--calibration", default=None, metavar="IMAGE_DIR",
                        help="images like the ones the model will serve, for --quantize (a few hundred is typical)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip running the export in its runtime against predict.py")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export of this format in OUT")
    parser.add_argument("--sliding", action="store_true", models=psp,
                        help="sliding-window inference inside the exported graph (default: whole image)")
    parser.add_argument("--crop", type=cli.parse_pair, default=(713, 713), models=psp,
                        help="sliding window size: 713 or H,W (default: 713)")
    parser.add_argument("--stride", type=cli.parse_pair, default=None, models=psp,
                        help="sliding window step H,W (default: ceil(2/3 of --crop))")
    parser.add_argument("--flip", action="store_true", models=psp,
                        help="average with the horizontally flipped image inside the graph")
    parser.add_argument("--probabilities", action="store_true", models=psp,
                        help="also return the class probabilities [H, W, C] float32")
    cli.add_resize_flags(parser, models=mrcnn)
    parser.add_argument("--score-threshold", type=float, default=0.5, models=mrcnn,
                        help="the served default: keep detections scoring at least this (clients may pass "
                             "their own)")
    cli.add_debug_flag(parser)
    return parser


def check_args(args):
    """Checks the flags against each other and OUT before any model is loaded; raises UsageError naming a flag."""
    if args.input_size is not None:
        for side in args.input_size:
            cli.check_positive("--input-size", side)
    for side in (args.crop or ()) + (args.stride or ()):
        cli.check_positive("--crop/--stride", side)
    cli.check_fraction("--score-threshold", args.score_threshold)
    if args.format == "litert" and args.input_size is None:
        raise UsageError("--format litert: LiteRT's builtin ops need a fixed image size; pass --input-size H,W")
    if args.precision == "bfloat16" and args.format in ("onnx", "litert"):
        raise UsageError(f"--precision bfloat16: --format {args.format} has no bfloat16 CPU kernels for these "
                         "models; use --format openvino or saved_model")
    if args.quantize:
        if args.format != "openvino":
            raise UsageError(f"--quantize int8: made with OpenVINO's NNCF, for --format openvino (not {args.format})")
        if args.precision != "float32":
            raise UsageError("--quantize int8: quantizes the float32 model; leave out --precision")
        if not args.calibration:
            raise UsageError("--quantize int8: pass --calibration IMAGE_DIR (images like the ones it will serve)")
    elif args.calibration:
        raise UsageError("--calibration: only used with --quantize int8")
    cli.check_output_dir("OUT", args.out)
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"{args.checkpoint}: no such file (a .keras checkpoint)")
    for path in (artifact_path(args.out, args.format), os.path.join(args.out, "export.json")):
        if os.path.exists(path) and not args.overwrite:
            raise OutputExistsError(f"{path}: exists already; pass --overwrite or another OUT")
    return args


def load_serving(args):
    """(serving module, reference(rgb) as predict.py computes it) for the parsed flags.

    The reference is always the float32 model, as predict.py runs it by default: a bfloat16 export's
    check then says what bfloat16 costs. Only the SavedModel computes in bfloat16 in its graph; an
    OpenVINO IR stays float32 and its CPU plugin runs it in bfloat16 when a client asks (export.json).
    """
    bfloat16_graph = args.precision == "bfloat16" and args.format == "saved_model"
    if args.model == "mask_rcnn":
        from models.export.mask_rcnn import DetectorServing
        from models.export.verify import detector_reference
        from models.mask_rcnn.loading import inference_sizes, load_detector

        detector = load_detector(args.checkpoint, flag="CHECKPOINT", hint="pass --model pspnet")
        sizes = inference_sizes(args.checkpoint, args.short_side, args.long_side)
        served = load_detector(args.checkpoint, flag="CHECKPOINT", precision="bfloat16") \
            if bfloat16_graph else detector
        serving = DetectorServing(served, short_side=sizes["short_side"],
                                  long_side=sizes["long_side"], score_threshold=args.score_threshold)
        return serving, detector_reference(detector, **sizes, score_threshold=args.score_threshold)
    from models.export.pspnet import PSPNetServing
    from models.export.verify import pspnet_reference
    from models.pspnet.inference import load_inference_model

    model = load_inference_model(args.checkpoint)
    settings = dict(mode="sliding" if args.sliding else "whole", crop_size=args.crop, stride=args.stride,
                    flip=args.flip)
    served = load_inference_model(args.checkpoint, precision="bfloat16") if bfloat16_graph else model
    serving = PSPNetServing(served, probabilities=args.probabilities, **settings)
    return serving, pspnet_reference(model, serving.label_table, **settings)


def export(args, report=print):
    """Exports as the checked flags say; returns the path of export.json."""
    from models.export import formats

    if args.overwrite:
        formats.clear(args.out, args.format)
    calibration = _calibration_images(args.calibration) if args.quantize else None
    serving, reference = load_serving(args)
    path = formats.write(serving, args.out, args.format, input_size=args.input_size)
    if args.quantize:
        from models.export.quantize import quantize_openvino

        quantize_openvino(path, calibration, serving.metadata())
    report(f"wrote {path} ({serving.metadata()['family']}, {args.format}, "
           f"{'int8' if args.quantize else args.precision})")
    verification = None
    if args.verify:
        from models.export.verify import verify

        precision = "int8" if args.quantize else args.precision
        verification = verify(args.format, path, serving.metadata()["family"], reference,
                              input_size=args.input_size, precision=precision,
                              score_threshold=args.score_threshold, report=report)
    return formats.write_manifest(args.out, args.format, serving, input_size=args.input_size,
                                  precision=args.precision, quantized=args.quantize, verification=verification)


def _calibration_images(folder):
    from data.images import find_images

    if not os.path.isdir(folder):
        raise UsageError(f"--calibration {folder}: not a folder of images")
    paths = find_images([folder])
    if not paths:
        raise UsageError(f"--calibration {folder}: holds no image")
    return paths


def main(argv=None):
    """Runs the export; returns the path of export.json. User errors exit with one line (status 1)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with cli.user_errors(args.debug):
        check_args(args)
        return export(args)


__all__ = ["ExportError", "build_parser", "check_args", "export", "main"]

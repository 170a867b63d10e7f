"""Segment your own images with a trained PSPNet, or detect instances with a Mask R-CNN.

    python predict.py --checkpoint runs/x/best.keras photo.jpg more_photos/ --out predictions/
    python predict.py --checkpoint ... IMAGES --out DIR --sliding --crop 713 --flip --scales 0.75,1,1.25
    python predict.py --model mask_rcnn --checkpoint maskrcnn.keras photo.jpg --out detections/ --score-threshold 0.5

Any size and any format Pillow reads (PNG, JPEG, BMP, TIFF, WebP, ...); greyscale,
RGBA (alpha dropped), 16-bit and EXIF-rotated images are converted as data.images
describes, and the outputs are upright. PSPNet: for each image NAME it writes
NAME_color.png (Cityscapes palette), NAME_overlay.png (the mask blended on the
image) and NAME_labelIds.png (single-channel Cityscapes labelIds). Mask R-CNN:
NAME_overlay.png (each instance's mask in its own colour, its box, class name
and score) and, for all images, detections.json in the COCO results format
(models.mask_rcnn.run_detector.predict_files). A bad image stops the run with
one line naming it; --skip-bad skips it with a warning.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN CPU kernels on (TensorFlow enables them only on some CPUs): 1.5x faster PSPNet training
# steps here, see BENCHMARKS.md. TF_ENABLE_ONEDNN_OPTS=0 in the environment turns them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def find_images(inputs):
    """Files given, plus the images inside folders given (sorted); one-line error for a missing path."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            for folder, _, files in sorted(os.walk(item)):
                paths += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise SystemExit(f"{item}: no such file or folder")
    if not paths:
        raise SystemExit(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {' '.join(inputs)}")
    return paths


def predict_image(model, rgb, *, mode="whole", crop_size=713, flip=False, scales=(1.0,)):
    """uint8 [H, W, 3] RGB -> trainId map [H, W] int32."""
    from data import cityscapes
    from models.pspnet.inference import predict_classes, predict_logits

    images = cityscapes.normalize_image(rgb[None])
    probabilities = predict_logits(model, images, mode=mode, crop_size=crop_size, flip=flip, scales=scales)
    return predict_classes(probabilities).numpy()[0]


def build_parser():
    from data import cli_checks

    parser = cli_checks.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["pspnet", "mask_rcnn"], default="pspnet")
    parser.add_argument("--checkpoint", required=True, help=".keras file written by train.py or models.convert")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    parser.add_argument("--out", required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace earlier outputs in --out")
    parser.add_argument("--sliding", action="store_true", help="sliding-window inference (default: whole image)")
    parser.add_argument("--crop", type=int, default=713, help="sliding window size")
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--scales", default="1", help="multi-scale factors, e.g. 0.75,1,1.25")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask, in [0, 1]")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="Mask R-CNN: keep detections scoring at least this, in [0, 1]")
    cli_checks.add_resize_flags(parser)
    cli_checks.add_skip_bad_flag(parser)
    cli_checks.add_debug_flag(parser)
    return parser


def check_args(args):
    """Checks the parsed flags (raises data.cli_checks.UsageError naming the flag); parses --scales.

    --out may not lie inside an input folder: the next run over that folder would take the
    masks written there for photos.
    """
    from data import cli_checks

    cli_checks.check_positive("--crop", args.crop)
    args.scales = cli_checks.parse_scales("--scales", args.scales)
    cli_checks.check_fraction("--alpha", args.alpha)
    cli_checks.check_fraction("--score-threshold", args.score_threshold)
    for flag, value in (("--short-side", args.short_side), ("--long-side", args.long_side)):
        if value is not None:
            cli_checks.check_positive(flag, value)
    for item in args.inputs:
        if os.path.isdir(item):
            cli_checks.check_output_outside("--out", args.out, "input folder", item)
    return args


def main(argv=None):
    from data import cli_checks

    args = build_parser().parse_args(argv)
    with cli_checks.user_errors(args.debug):
        check_args(args)
        return _predict_mask_rcnn(args) if args.model == "mask_rcnn" else _predict(args)


def _predict_mask_rcnn(args):
    from models.mask_rcnn.detector_io import inference_sizes, load_detector
    from models.mask_rcnn.run_detector import predict_files

    paths = find_images(args.inputs)
    detector = load_detector(args.checkpoint)
    sizes = inference_sizes(args.checkpoint, args.short_side, args.long_side)
    return predict_files(detector, paths, args.out, min_size=sizes["short_side"], max_size=sizes["long_side"],
                         score_threshold=args.score_threshold, alpha=args.alpha, overwrite=args.overwrite,
                         skip_bad=args.skip_bad)


def _predict(args):
    from data import cityscapes, cli_checks, images
    from models import checkpoints
    from models.pspnet import inference_model
    from models.pspnet.inference import colorize, overlay

    paths = find_images(args.inputs)
    model = checkpoints.check_kind(checkpoints.load_keras_file(args.checkpoint), checkpoints.PSPNET,
                                   args.checkpoint, hint="pass --model mask_rcnn")
    model = inference_model(model) if isinstance(model.output, dict) else model
    os.makedirs(args.out, exist_ok=True)
    written, skipped = [], 0
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        targets = {kind: os.path.join(args.out, f"{stem}_{kind}.png") for kind in ("color", "overlay", "labelIds")}
        if not args.overwrite and any(os.path.exists(t) for t in targets.values()):
            raise SystemExit(f"{targets['color']}: exists already; pass --overwrite or another --out")
        try:
            rgb = images.read_image(path)
        except images.BadImageError as error:
            if not args.skip_bad:
                raise
            cli_checks.warn(f"skipped: {error}")
            skipped += 1
            continue
        train_ids = predict_image(model, rgb, mode="sliding" if args.sliding else "whole", crop_size=args.crop,
                                  flip=args.flip, scales=args.scales)
        color = colorize(train_ids, cityscapes.CLASS_COLORS)
        images.write_png(targets["color"], color)
        images.write_png(targets["overlay"], overlay(rgb, color, alpha=args.alpha))
        images.write_png(targets["labelIds"], cityscapes.to_label_ids(train_ids))
        written.append(targets["overlay"])
    if skipped:
        cli_checks.warn(f"skipped {skipped} of {len(paths)} images that could not be read (--skip-bad)")
    print(f"wrote masks and overlays of {len(written)} image(s) to {args.out}")
    return written


if __name__ == "__main__":
    main()
    sys.exit(0)

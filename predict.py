"""Segment your own images with a trained PSPNet, or detect instances with a Mask R-CNN.

    python predict.py --checkpoint runs/x/best.keras photo.jpg more_photos/ --out predictions/
    python predict.py --checkpoint ... IMAGES --out DIR --sliding --crop 713 --flip --scales 0.75,1,1.25
    python predict.py --checkpoint pspnet50_mmseg.keras IMAGES --out DIR --protocol mmseg   # or semseg
    python predict.py --model mask_rcnn --checkpoint maskrcnn.keras photo.jpg --out detections/ --score-threshold 0.5
    python predict.py ... --precision bfloat16     # bfloat16 layers, float32 weights (models/precision.py)

Any size and any format Pillow reads (PNG, JPEG, BMP, TIFF, WebP, ...); greyscale,
RGBA (alpha dropped), 16-bit and EXIF-rotated images are converted as data.images
describes, and the outputs are upright. PSPNet: for each image NAME it writes
NAME_color.png (Cityscapes palette), NAME_overlay.png (the mask blended on the
image) and NAME_labelIds.png (single-channel Cityscapes labelIds)
(models.pspnet.prediction.predict_files). Mask R-CNN:
NAME_overlay.png (each instance's mask in its own colour, its box, class name
and score) and, for all images, detections.json in the COCO results format
(models.mask_rcnn.prediction.predict_files). A bad image stops the run with
one line naming it; --skip-bad skips it with a warning. This file parses the
flags and dispatches.
"""
import os
import sys

from data.cli import set_tensorflow_environment  # imports no TensorFlow

# Before TensorFlow is imported (it reads these once): quiet C++ logging, oneDNN CPU kernels where they help.
set_tensorflow_environment()


def build_parser():
    from data import cli
    from data.progress import add_quiet_flag

    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    psp, mrcnn = ("pspnet",), ("mask_rcnn",)  # flags one family uses: given with the other --model, refused
    parser.add_argument("--model", choices=["pspnet", "mask_rcnn"], default="pspnet",
                        help="the model family of --checkpoint: PSPNet masks or Mask R-CNN instances")
    parser.add_argument("--checkpoint", required=True, help=".keras file written by train.py or models.convert")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR",
                        help="image files, and folders whose images (walked, sorted) are all predicted")
    parser.add_argument("--out", required=True, help="folder for the masks, overlays (and detections.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier outputs in --out")
    cli.add_segmentation_flags(parser, models=psp)
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask, in [0, 1]")
    parser.add_argument("--score-threshold", type=float, default=0.5, models=mrcnn,
                        help="keep detections scoring at least this, in [0, 1]")
    cli.add_resize_flags(parser, models=mrcnn)
    cli.add_skip_bad_flag(parser)
    cli.add_precision_flag(parser)
    add_quiet_flag(parser)
    cli.add_debug_flag(parser)
    return parser


def check_args(args):
    """Checks the parsed flags (raises data.cli.UsageError naming the flag); PSPNet's inference flags are
    checked by resolve_protocol.

    --out may not lie inside an input folder: the next run over that folder would take the
    masks written there for photos.
    """
    from data import cli

    cli.check_fraction("--alpha", args.alpha)
    cli.check_fraction("--score-threshold", args.score_threshold)
    for flag, value in (("--short-side", args.short_side), ("--long-side", args.long_side)):
        if value is not None:
            cli.check_positive(flag, value)
    for item in args.inputs:
        if os.path.isdir(item):
            cli.check_output_outside("--out", args.out, "input folder", item)
    cli.check_output_dir("--out", args.out)
    return args



def main(argv=None):
    """Parses argv (default sys.argv), checks the flags, predicts; returns the overlay paths written."""
    from data import cli, images
    from data.progress import Progress

    parser = build_parser()
    args = parser.parse_args(argv)
    progress = Progress(quiet=args.quiet)
    with cli.user_errors(args.debug):
        check_args(args)
        protocol = None
        if args.model == "pspnet":
            from models.pspnet.protocol_settings import resolve_protocol

            protocol = resolve_protocol(args, cli.given_flags(parser, argv), args.checkpoint)
        paths = images.find_images(args.inputs)  # before the checkpoint: a wrong path is found in seconds
        from models.checkpoints import origin_lines

        for line in origin_lines(args.checkpoint, protocol):
            print(line, flush=True)
        if args.precision == "bfloat16":
            from models.precision import bfloat16_note

            if note := bfloat16_note():
                cli.warn(note)
        if args.model == "mask_rcnn":
            from models.mask_rcnn.loading import inference_sizes, load_detector
            from models.mask_rcnn.prediction import predict_files

            detector = load_detector(args.checkpoint, hint="pass --model pspnet", precision=args.precision)
            sizes = inference_sizes(args.checkpoint, args.short_side, args.long_side)
            return predict_files(detector, paths, args.out, **sizes, score_threshold=args.score_threshold,
                                 alpha=args.alpha, overwrite=args.overwrite, skip_bad=args.skip_bad,
                                 progress=progress)
        from models.pspnet.inference import load_inference_model
        from models.pspnet.prediction import predict_files

        model = load_inference_model(args.checkpoint, args.precision)
        return predict_files(model, paths, args.out, protocol=protocol, alpha=args.alpha,
                             overwrite=args.overwrite, skip_bad=args.skip_bad, progress=progress)


if __name__ == "__main__":
    main()
    sys.exit(0)

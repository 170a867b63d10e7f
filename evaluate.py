"""Evaluate a checkpoint the way the benchmark does: Cityscapes mIoU (PSPNet) or COCO mask AP (Mask R-CNN).

    python evaluate.py --model pspnet --checkpoint runs/x/best.keras --data /data/cityscapes --split val --out eval/
    python evaluate.py ... --sliding --flip --scales 0.5,0.75,1,1.25,1.5,1.75
    python evaluate.py ... --protocol semseg     # or mmseg: a source's own test (models/pspnet/protocol_settings.py)
    python evaluate.py --model mask_rcnn --checkpoint FILE --data COCO_DIR --split val --out DIR   # from raw images
    python evaluate.py --model mask_rcnn --boxes gt --checkpoint FILE --data COCO_DIR --split val --out DIR
    python evaluate.py ... --precision bfloat16  # bfloat16 layers, float32 weights (models/precision.py)

Output in OUT: metrics.json; PSPNet: <city>_<seq>_<frame>_pred_labelIds.png (what
`CITYSCAPES_RESULTS=OUT csEvalPixelLevelSemanticLabeling` and the test server read),
confusion_matrix.png, colour previews in color/ (models/pspnet/evaluation.py);
Mask R-CNN: bbox_results.json and segm_results.json in the COCO results format
(models/mask_rcnn/evaluation.py). This file parses the flags and dispatches.
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
                        help="the model family of --checkpoint: PSPNet on Cityscapes, Mask R-CNN on COCO")
    parser.add_argument("--checkpoint", required=True, help=".keras file written by train.py or models.convert")
    parser.add_argument("--data", required=True, help="dataset root (Cityscapes: holds leftImg8bit/ and gtFine/; "
                                                      "COCO: annotations/ and SPLIT2017/)")
    parser.add_argument("--split", default="val", help="the dataset split to score (default: val)")
    parser.add_argument("--out", required=True, help="folder for metrics.json and predictions")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier evaluation in --out")
    parser.add_argument("--tfds", action="store_true", models=psp,
                        help="read --data as the folder with the Cityscapes zips (TFDS)")
    cli.add_segmentation_flags(parser, models=psp)
    parser.add_argument("--max-images", type=int, default=0, help="evaluate the first N images only (0 = all)")
    parser.add_argument("--boxes", choices=["detector", "gt"], default="detector", models=mrcnn,
                        help="detector = detect from raw images (bbox and segm AP); "
                             "gt = masks for the ground-truth boxes (oracle segm AP)")
    parser.add_argument("--class-source", choices=["predicted", "ground_truth"], default="predicted", models=mrcnn,
                        help="which class picks each box's mask channel (and gives its category)")
    cli.add_resize_flags(parser, models=mrcnn)
    # How detections become COCO results (models/mask_rcnn/evaluation.py, coco_settings): by default
    # torchvision's references/detection rules for a converted torchvision model, this project's for a run's own.
    parser.add_argument("--mask-rule", choices=["above", "at_least"], default=None, models=mrcnn,
                        help="mask pixels kept: above = probability > 0.5 (torchvision's coco_eval; default for "
                             "converted torchvision models), at_least = >= 0.5 (default for this project's runs)")
    parser.add_argument("--score-threshold", type=float, default=None, models=mrcnn,
                        help="keep detections scoring above this (default: the model's own, 0.05 for "
                             "converted torchvision models; a lower value is refused)")
    parser.add_argument("--detections-per-image", type=int, default=None, models=mrcnn,
                        help="keep each image's N best detections (default: all the model gives, 100 for "
                             "converted torchvision models; more is refused)")
    parser.add_argument("--box-decimals", default=None, models=mrcnn,
                        help="round bbox results to N decimals, or 'none' (default: none for converted "
                             "torchvision models, as torchvision's coco_eval; 2 for this project's runs)")
    parser.add_argument("--scored-images", choices=["evaluated", "all"], default=None, models=mrcnn,
                        help="the images COCOeval scores: evaluated = those run (torchvision's CocoEvaluator; "
                             "default for converted torchvision models), all = every image of --split, those "
                             "--max-images leaves out counting as missed (default for this project's runs)")
    cli.add_skip_bad_flag(parser, models=psp)
    cli.add_precision_flag(parser)
    add_quiet_flag(parser)
    cli.add_debug_flag(parser)
    return parser


def check_args(args):
    """Checks the parsed flags (raises data.cli.UsageError naming the flag); PSPNet's inference flags are
    checked by resolve_protocol."""
    from data import cli

    cli.check_non_negative("--max-images", args.max_images, " (0 evaluates every image)")
    for flag, value in (("--short-side", args.short_side), ("--long-side", args.long_side)):
        if value is not None:
            cli.check_positive(flag, value)
    if args.score_threshold is not None:
        cli.check_fraction("--score-threshold", args.score_threshold)
    if args.detections_per_image is not None:
        cli.check_positive("--detections-per-image", args.detections_per_image)
    if args.box_decimals is not None and args.box_decimals != "none":
        if not args.box_decimals.isdigit():
            raise cli.UsageError(f"--box-decimals takes a number of decimals (0 or more) or 'none', "
                                 f"got {args.box_decimals!r}")
        args.box_decimals = int(args.box_decimals)
    cli.check_output_outside("--out", args.out, "--data", args.data)
    cli.check_output_dir("--out", args.out)
    return args



def main(argv=None):
    """Parses argv (default sys.argv), checks the flags, evaluates; returns the metrics dict."""
    from data import cli
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
        if os.path.exists(os.path.join(args.out, "metrics.json")) and not args.overwrite:
            raise cli.UsageError(f"--out {args.out}: holds an earlier evaluation (metrics.json); "
                                 "pass --overwrite or another --out")
        from models.checkpoints import origin_lines

        for line in origin_lines(args.checkpoint, protocol):
            print(line, flush=True)
        if args.precision == "bfloat16":
            from models.precision import bfloat16_note

            if note := bfloat16_note():
                cli.warn(note)
        if args.model == "mask_rcnn":
            from models.mask_rcnn.evaluation import evaluate_on_coco

            return evaluate_on_coco(args.checkpoint, args.data, args.out, split=args.split, boxes=args.boxes,
                                    class_source=args.class_source, short_side=args.short_side,
                                    long_side=args.long_side, max_images=args.max_images,
                                    progress=progress, mask_rule=args.mask_rule,
                                    score_threshold=args.score_threshold,
                                    detections_per_image=args.detections_per_image,
                                    box_decimals=args.box_decimals, scored_images=args.scored_images,
                                    precision=args.precision)
        from models.pspnet.evaluation import evaluate_on_cityscapes

        return evaluate_on_cityscapes(args.checkpoint, args.data, args.out, split=args.split, tfds=args.tfds,
                                      protocol=protocol, max_images=args.max_images, skip_bad=args.skip_bad,
                                      progress=progress, precision=args.precision)


if __name__ == "__main__":
    main()
    sys.exit(0)

"""Run a trained PSPNet or Mask R-CNN on your own images: colour masks and overlays.

    python predict.py --checkpoint runs/x/best.keras photo.jpg more_photos/ --out predictions/
    python predict.py --checkpoint ... IMAGES --out DIR --sliding --crop 713 --flip --scales 0.75,1,1.25
    python predict.py --model mask_rcnn --checkpoint maskrcnn.keras photo.jpg --out detections/ --score-threshold 0.5

Any size and any format Pillow reads (PNG, JPEG, BMP, TIFF, WebP, ...). For each
image NAME it writes NAME_color.png (Cityscapes palette), NAME_overlay.png
(the mask blended on the image) and NAME_labelIds.png (single-channel
Cityscapes labelIds). Mask R-CNN writes NAME_overlay.png (each instance's mask
in its own colour, its box, class name and score) and, for all images,
detections.json in the COCO results format (category ids as the model
carries them, bbox [x, y, w, h] and the mask's RLE per detection; image_id
numbers the images in order from 1, file_name names them).
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN CPU kernels on (TensorFlow enables them only on some CPUs): 1.5x faster PSPNet training
# steps here, see BENCHMARKS.md. TF_ENABLE_ONEDNN_OPTS=0 in the environment turns them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import numpy as np  # noqa: E402

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


def read_rgb(path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise SystemExit(f"{path}: not a readable image ({error})")


def predict_image(model, rgb, *, mode="whole", crop_size=713, flip=False, scales=(1.0,)):
    """uint8 [H, W, 3] RGB -> trainId map [H, W] int32."""
    from data import cityscapes
    from models.pspnet.inference import predict_classes, predict_logits

    images = cityscapes.normalize_image(rgb[None])
    probabilities = predict_logits(model, images, mode=mode, crop_size=crop_size, flip=flip, scales=scales)
    return predict_classes(probabilities).numpy()[0]


def predict_mask_rcnn(args, paths):
    """Overlays and detections.json of every image (see the module docstring); returns the overlay paths."""
    from data.coco import segm_results, write_results
    from data.coco_eval import bbox_results
    from models.mask_rcnn.detector_io import inference_sizes, load_detector
    from models.mask_rcnn.run_detector import ModelCategories, compiled, detect_image, draw_detections
    from PIL import Image

    targets = [os.path.join(args.out, f"{os.path.splitext(os.path.basename(p))[0]}_overlay.png") for p in paths]
    json_path = os.path.join(args.out, "detections.json")
    for target in targets + [json_path]:
        if not args.overwrite and os.path.exists(target):
            raise SystemExit(f"{target}: exists already; pass --overwrite or another --out")
    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f"--checkpoint {args.checkpoint}: no such file (a .keras detector)")
    try:
        detector = load_detector(args.checkpoint)
    except Exception as error:  # a corrupt or foreign file: say which and why, in one line
        raise SystemExit(f"--checkpoint {args.checkpoint}: not a Mask R-CNN detector "
                         f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
    sizes = inference_sizes(args.checkpoint, args.short_side, args.long_side)
    categories = ModelCategories(detector)
    os.makedirs(args.out, exist_ok=True)
    run = compiled(detector)
    results = []
    for image_id, (path, target) in enumerate(zip(paths, targets), start=1):
        rgb = read_rgb(path)
        detection = detect_image(run, rgb, min_size=sizes["short_side"], max_size=sizes["long_side"],
                                 score_threshold=args.score_threshold)
        Image.fromarray(draw_detections(rgb, detection, categories.names, alpha=args.alpha)).save(target)
        found = dict(detection, image_id=image_id)
        # One entry per detection: its box, its mask and its score together.
        for box, mask in zip(bbox_results([found], categories), segm_results([found], categories)):
            results.append({**box, "segmentation": mask["segmentation"], "file_name": os.path.basename(path)})
        print(f"{path}: {len(detection['class_ids'])} detection(s) scoring >= {args.score_threshold}")
    write_results(json_path, results)
    print(f"wrote {len(targets)} overlay(s) and {json_path} to {args.out}")
    return targets


def main(argv=None):
    from evaluate import _parse_scales, _write_png, load_segmentation_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["pspnet", "mask_rcnn"], default="pspnet")
    parser.add_argument("--checkpoint", required=True, help=".keras file written by train.py")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    parser.add_argument("--out", required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace earlier outputs in --out")
    parser.add_argument("--sliding", action="store_true", help="sliding-window inference (default: whole image)")
    parser.add_argument("--crop", type=int, default=713, help="sliding window size")
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--scales", type=_parse_scales, default=(1.0,))
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="Mask R-CNN: keep detections scoring at least this")
    parser.add_argument("--short-side", type=int, default=None, help="Mask R-CNN: resize (default: the run's config)")
    parser.add_argument("--long-side", type=int, default=None, help="Mask R-CNN: resize limit (default: the run's)")
    args = parser.parse_args(argv)
    if args.model == "mask_rcnn":
        return predict_mask_rcnn(args, find_images(args.inputs))

    from data import cityscapes
    from models.pspnet.inference import colorize, overlay

    paths = find_images(args.inputs)
    model = load_segmentation_model(args.checkpoint)
    os.makedirs(args.out, exist_ok=True)
    written = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        targets = {kind: os.path.join(args.out, f"{stem}_{kind}.png") for kind in ("color", "overlay", "labelIds")}
        if not args.overwrite and any(os.path.exists(t) for t in targets.values()):
            raise SystemExit(f"{targets['color']}: exists already; pass --overwrite or another --out")
        rgb = read_rgb(path)
        train_ids = predict_image(model, rgb, mode="sliding" if args.sliding else "whole", crop_size=args.crop,
                                  flip=args.flip, scales=args.scales)
        color = colorize(train_ids, cityscapes.CLASS_COLORS)
        _write_png(targets["color"], color)
        _write_png(targets["overlay"], overlay(rgb, color, alpha=args.alpha))
        _write_png(targets["labelIds"], cityscapes.to_label_ids(train_ids))
        written.append(targets["overlay"])
    print(f"wrote masks and overlays of {len(paths)} image(s) to {args.out}")
    return written


if __name__ == "__main__":
    main()
    sys.exit(0)

"""Segmenting a user's own images with a PSPNet (what `predict.py --model pspnet` runs).

    model = models.pspnet.inference.load_inference_model("runs/x/best.keras")
    written = predict_files(model, data.images.find_images(["photos/"]), "predictions/", flip=True)

For each image NAME: NAME_color.png (Cityscapes palette), NAME_overlay.png (the
mask blended on the image) and NAME_labelIds.png (single-channel Cityscapes labelIds),
all at the image's size and upright (data.images.read_image applies EXIF rotation).
"""
import os


def predict_image(model, rgb, *, mode="whole", crop_size=713, flip=False, scales=(1.0,)):
    """uint8 [H, W, 3] RGB -> trainId map [H, W] int32 (mode, crop_size, flip, scales: as predict_logits)."""
    from data.normalization import normalize
    from models.pspnet.inference import predict_classes, predict_logits

    images = normalize(rgb[None])
    probabilities = predict_logits(model, images, mode=mode, crop_size=crop_size, flip=flip, scales=scales)
    return predict_classes(probabilities).numpy()[0]


def predict_files(model, paths, out_dir, *, mode="whole", crop_size=713, flip=False, scales=(1.0,), alpha=0.5,
                  overwrite=False, skip_bad=False):
    """The colour mask, overlay and labelIds PNGs of each image file; returns the overlay paths written.

    model: a PSPNet with one logits output (load_inference_model). alpha: the
    mask's opacity in the overlay. An image whose outputs exist already stops
    the run (data.errors.UsageError naming it) unless overwrite. A bad image raises
    data.images.BadImageError, or with skip_bad is skipped with a warning and counted.
    """
    from data import cityscapes, cli, images
    from data.errors import UsageError
    from models.pspnet.inference import colorize, overlay

    os.makedirs(out_dir, exist_ok=True)
    written, skipped = [], 0
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        targets = {kind: os.path.join(out_dir, f"{stem}_{kind}.png") for kind in ("color", "overlay", "labelIds")}
        if not overwrite and any(os.path.exists(t) for t in targets.values()):
            raise UsageError(f"{targets['color']}: exists already; pass --overwrite or another --out")
        rgb = cli.read_image_or_skip(path, skip_bad)
        if rgb is None:
            skipped += 1
            continue
        train_ids = predict_image(model, rgb, mode=mode, crop_size=crop_size, flip=flip, scales=scales)
        color = colorize(train_ids, cityscapes.CLASS_COLORS)
        images.write_png(targets["color"], color)
        images.write_png(targets["overlay"], overlay(rgb, color, alpha=alpha))
        images.write_png(targets["labelIds"], cityscapes.to_label_ids(train_ids))
        written.append(targets["overlay"])
    if skipped:
        cli.warn(f"skipped {skipped} of {len(paths)} images that could not be read (--skip-bad)")
    print(f"wrote masks and overlays of {len(written)} image(s) to {out_dir}")
    return written

"""Segmenting a user's own images with a PSPNet (what `predict.py --model pspnet` runs).

    model = models.pspnet.inference.load_inference_model("runs/x/best.keras")
    written = predict_files(model, data.images.find_images(["photos/"]), "predictions/", flip=True)

For each image NAME: NAME_color.png (Cityscapes palette), NAME_overlay.png (the
mask blended on the image) and NAME_labelIds.png (single-channel Cityscapes labelIds),
all at the image's size and upright (data.images.read_image applies EXIF rotation).
"""


def predict_image(model, rgb, *, mode="whole", crop_size=713, stride=None, flip=False, scales=(1.0,)):
    """uint8 [H, W, 3] RGB -> trainId map [H, W] int32 (mode, crop_size, stride, flip, scales: as predict_logits)."""
    from data.normalization import normalize
    from models.pspnet.inference import predict_classes, predict_logits

    images = normalize(rgb[None])
    probabilities = predict_logits(model, images, mode=mode, crop_size=crop_size, stride=stride, flip=flip,
                                   scales=scales)
    return predict_classes(probabilities).numpy()[0]


def predict_files(model, paths, out_dir, *, mode="whole", crop_size=713, flip=False, scales=(1.0,), alpha=0.5,
                  overwrite=False, skip_bad=False, progress=None, protocol=None):
    """The colour mask, overlay and labelIds PNGs of each image file; returns the overlay paths written.

    model: a PSPNet with one logits output (load_inference_model). protocol: a
    models.pspnet.protocol_settings.TestProtocol that predicts each uint8 image (then mode,
    crop_size, flip and scales are unused); None: predict_image with those. alpha: the
    mask's opacity in the overlay. The loop is data.image_files.predict_over_images:
    outputs that exist already are refused (UsageError) unless overwrite; a bad
    image raises data.images.BadImageError, or with skip_bad is skipped with a
    warning and counted; progress: a data.progress.Progress (None: shown on stderr).
    """
    from data import cityscapes, images
    from data.image_files import predict_over_images
    from models.pspnet.inference import colorize, overlay

    def work(number, path, rgb, targets):
        if protocol is not None:
            train_ids = protocol.predict(model, rgb)
        else:
            train_ids = predict_image(model, rgb, mode=mode, crop_size=crop_size, flip=flip, scales=scales)
        color = colorize(train_ids, cityscapes.CLASS_COLORS)
        images.write_png(targets["color"], color)
        images.write_png(targets["overlay"], overlay(rgb, color, alpha=alpha))
        images.write_png(targets["labelIds"], cityscapes.to_label_ids(train_ids))

    done = predict_over_images(paths, out_dir, ("color", "overlay", "labelIds"), work, overwrite=overwrite,
                               skip_bad=skip_bad, progress=progress)
    print(f"wrote masks and overlays of {len(done)} image(s) to {out_dir}")
    return [targets["overlay"] for _, targets in done]

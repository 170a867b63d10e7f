"""The whole Mask R-CNN detector's inference: ours (Keras, TF graph) against torchvision's maskrcnn_resnet50_fpn.

Both sides run the same weights: a randomised torchvision model (calibrated
on the photo so that it gives about 100 detections, as the converter tests
do) is saved and converted with `python -m models.convert`'s code. The photo
is matplotlib's grace_hopper.jpg resized to 800 x 1333, which the transform
keeps at that size (padded to 800 x 1344). Rows:
- detect(): what a user gets, photo in, pasted masks out
  (models.mask_rcnn.transform.detect; torchvision: model([image]) in no_grad);
- the network alone on transformed images (ours: the Keras model in a
  tf.function; torchvision: backbone + RPN + RoI heads, no transform or pasting).
Both frameworks run on the same number of CPU threads (python -m benchmarks
--threads). --quick: a small detector (ResNet-50 at base width 16) with random
weights on a 128 x 160 image, ours only (torchvision's model has one size).
Peak memory of each side: benchmarks.memory (its torchvision probe takes the
photo from here, so TensorFlow and the models are imported inside the
functions that use them).
"""
import atexit
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from benchmarks.harness import Result, alternating_median_times, median_time

FULL_SIZE, QUICK_SIZE = (800, 1333), (128, 160)
_CONVERTED = {}  # quick -> (torchvision .pth or None, .keras path), made once per process


def photo(quick):
    """grace_hopper.jpg (600 x 512) resized to the benchmark's size: [H, W, 3] uint8 RGB.

    Read here rather than with tests.models.torchvision_maskrcnn.grace_hopper,
    which imports torch: our memory probe must not carry torch's runtime.
    """
    import matplotlib.cbook

    height, width = QUICK_SIZE if quick else FULL_SIZE
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as image:
        return np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR))


def converted_models(quick):
    """(torchvision .pth path or None, our .keras path) of the benchmark's weights, written once to a temp folder."""
    if quick not in _CONVERTED:
        folder = tempfile.mkdtemp(prefix="detector_benchmark_")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)  # ~350 MB of weights
        keras_path = os.path.join(folder, "maskrcnn.keras")
        if quick:
            from models.mask_rcnn.detector import build_mask_rcnn

            torch_path = None
            build_mask_rcnn(80, base_width=16, fpn_channels=32).save(keras_path)
        else:
            try:
                from benchmarks import torchvision_detector
            except ImportError as error:
                raise SystemExit(f"the detector benchmark compares with torchvision: pip install -e '.[test]' "
                                 f"({error})")
            from models import convert

            torch_path = os.path.join(folder, "maskrcnn.pth")
            torchvision_detector.save_randomised(photo(quick), torch_path)
            convert.main(["torchvision-maskrcnn", torch_path, keras_path])
        _CONVERTED[quick] = (torch_path, keras_path)
    return _CONVERTED[quick]


def load_ours(keras_path):
    """The converted detector, loaded as a user loads it (safe mode)."""
    import keras

    return keras.saving.load_model(keras_path, safe_mode=True)


def network_function(model):
    """The Keras model's call as one graph: {"images", "image_sizes"} -> its outputs."""
    import tensorflow as tf

    return tf.function(lambda inputs: model(inputs, training=False))


def run(quick=False):
    from models.mask_rcnn.transform import detect, preprocess

    torch_path, keras_path = converted_models(quick)
    image = photo(quick)
    model = load_ours(keras_path)
    inputs = preprocess([image])
    inputs = {"images": inputs["images"], "image_sizes": inputs["image_sizes"]}
    call = network_function(model)
    repeats = 2 if quick else 3
    size = f"1x{image.shape[0]}x{image.shape[1]}" + (" r50/w16" if quick else " resnet50")
    count = len(detect(model, [image])[0]["scores"])
    ours = [lambda: detect(model, [image])[0]["masks"].rle(),
            lambda: {k: v.numpy() for k, v in call(inputs).items()}]
    if quick:
        ours_detect, ours_network = (median_time(fn, repeats=repeats) for fn in ours)
    else:
        from benchmarks import torchvision_detector as tv

        reference = tv.load(torch_path)
        reference_count = len(tv.detect(reference, image)["scores"])
        images = tv.transformed(reference, image)
        # Ours and torchvision's in turn, so that other load on the machine slows both alike.
        ours_detect, ours_network, tv_detect, tv_network = alternating_median_times(
            [*ours, lambda: tv.detect(reference, image), lambda: tv.network(reference, images)], repeats=repeats)
    results = [
        Result("detector detect() [ours]", size, ours_detect, throughput=f"{1 / ours_detect:.2f} img/s",
               note=f"{count} detections; preprocess + Keras model + masks pasted (PastedMasks.rle())"),
        Result("detector network [ours]", size, ours_network, throughput=f"{1 / ours_network:.2f} img/s",
               note="the Keras model alone in a tf.function, on preprocessed inputs"),
    ]
    if quick:
        return results
    return results + [
        Result("detector detect() [torchvision]", size, tv_detect, throughput=f"{1 / tv_detect:.2f} img/s",
               note=f"{reference_count} detections; maskrcnn_resnet50_fpn(image list) in no_grad, masks pasted"),
        Result("detector network [torchvision]", size, tv_network, throughput=f"{1 / tv_network:.2f} img/s",
               note="backbone + RPN + RoI heads on transformed images, no_grad"),
        Result("detector detect() ours / torchvision", size, ours_detect, ratio=ours_detect / tv_detect,
               target="<= 1.0", note="same weights, same threads, same run, timed in turn"),
        Result("detector network ours / torchvision", size, ours_network, ratio=ours_network / tv_network,
               target="<= 1.0", note="same weights, same threads, same run, timed in turn"),
    ]

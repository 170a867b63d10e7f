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
- one training step at batch 2 (two copies of the photo, three ground-truth
  instances; ours: DetectorTrainer(stage="all").train_on_batch on a
  data.coco-style batch; torchvision: train mode, SGD step), both at
  torchvision's fine-tuning defaults (frozen BatchNorm, 3 trainable ResNet
  stages, 2000 training proposals per image, 512 sampled RoIs).
Both frameworks run on the same number of CPU threads (python -m benchmarks
--threads). --quick: a small detector (ResNet-50 at base width 16) with random
weights on a 128 x 160 image, ours only (torchvision's model has one size),
no training step (its first call alone takes minutes of tracing here).
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
# The training step's ground truth on the 800 x 1333 photo: (y1, x1, y2, x2) boxes and class ids in the
# converted model's 91 COCO slots (person, person, tie);
# each instance's mask is the ellipse inscribed in its box.
TRAIN_BOXES = ((120.0, 380.0, 800.0, 1100.0), (60.0, 520.0, 420.0, 860.0), (500.0, 40.0, 780.0, 330.0))
TRAIN_CLASS_IDS = (1, 1, 32)
TRAIN_LEARNING_RATE = 1e-4  # small: the timed steps repeat on one batch and must stay finite
_CONVERTED = {}  # quick -> (torchvision .pth or None, .keras path), made once per process


def photo(quick):
    """grace_hopper.jpg (600 x 512) resized to the benchmark's size: [H, W, 3] uint8 RGB.

    Read here rather than with tests.models.mask_rcnn.torchvision_maskrcnn.grace_hopper,
    which imports torch: our memory probe must not carry torch's runtime.
    """
    return resized_photo(QUICK_SIZE if quick else FULL_SIZE)


def resized_photo(size):
    """grace_hopper.jpg resized (bilinear) to size (H, W): [H, W, 3] uint8 RGB."""
    import matplotlib.cbook

    height, width = size
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
                from data.errors import UserError

                raise UserError(f"--only detector compares with torchvision: pip install -e '.[test]' "
                                f"({error})") from None
            from models.convert import command as convert

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
    results += [
        Result("detector detect() [torchvision]", size, tv_detect, throughput=f"{1 / tv_detect:.2f} img/s",
               note=f"{reference_count} detections; maskrcnn_resnet50_fpn(image list) in no_grad, masks pasted"),
        Result("detector network [torchvision]", size, tv_network, throughput=f"{1 / tv_network:.2f} img/s",
               note="backbone + RPN + RoI heads on transformed images, no_grad"),
        Result("detector detect() ours / torchvision", size, ours_detect, ratio=ours_detect / tv_detect,
               target="<= 1.0", note="same weights, same threads, same run, timed in turn"),
        Result("detector network ours / torchvision", size, ours_network, ratio=ours_network / tv_network,
               target="<= 1.0", note="same weights, same threads, same run, timed in turn"),
    ]
    return results + run_training(torch_path, keras_path)


def _ellipse(ys, xs, box):
    """Whether the points (ys [h, 1], xs [1, w]) lie in the ellipse inscribed in `box` (y1, x1, y2, x2)."""
    y1, x1, y2, x2 = box
    return (((ys - (y1 + y2) / 2) / ((y2 - y1) / 2)) ** 2 + ((xs - (x1 + x2) / 2) / ((x2 - x1) / 2)) ** 2) <= 1.0


def ground_truth(mask_size=56):
    """The training step's instances on the 800 x 1333 photo (TRAIN_BOXES): boxes [N, 4] float32
    (y1, x1, y2, x2), class_ids [N] int32, masks [N, S, S] uint8 0/255 (box crops, data.coco's form),
    full_masks [N, 800, 1333] bool (torchvision's form). Both masks sample the same ellipses at pixel centres."""
    height, width = FULL_SIZE
    boxes = np.array(TRAIN_BOXES, np.float32)
    centres = (np.arange(mask_size) + 0.5) / mask_size
    crop = _ellipse(centres[:, None], centres[None], (0.0, 0.0, 1.0, 1.0))
    full = [_ellipse(np.arange(height)[:, None] + 0.5, np.arange(width)[None] + 0.5, box) for box in boxes]
    return {"boxes": boxes, "class_ids": np.array(TRAIN_CLASS_IDS, np.int32),
            "masks": np.repeat(crop[None].astype(np.uint8) * 255, len(boxes), axis=0), "full_masks": np.stack(full)}


def training_batch(image, truth, max_instances=100):
    """A data.coco.make_dataset-style batch of two copies of `image` ([h, w, 3] uint8, kept as decoded: the
    trainer resizes it to image_size, data.coco's rule at 800 / 1333), instances padded to max_instances
    (data.coco's default) with class 0: a dict of NumPy arrays."""
    from data.coco import resized_size

    original = np.array(image.shape[:2], np.int32)
    resized = np.array([int(v) for v in resized_size(*original)], np.int32)
    count = len(truth["boxes"])

    def padded(array):
        return np.stack([np.pad(array, [(0, max_instances - count)] + [(0, 0)] * (array.ndim - 1))] * 2)

    return {"image": np.stack([image, image]), "image_size": np.stack([resized, resized]),
            "boxes": padded(truth["boxes"]), "class_ids": padded(truth["class_ids"]),
            "masks": padded(truth["masks"]), "crowd_boxes": np.zeros((2, max_instances, 4), np.float32),
            "num_instances": np.full(2, count, np.int32), "image_id": np.arange(2, dtype=np.int64),
            "original_size": np.stack([original, original])}


def training_step_ours(keras_path):
    """ours: a function running one DetectorTrainer(stage="all").train_on_batch on the photo's batch
    (torchvision's defaults: set_stage's 3 trainable stages and frozen BatchNorm, 2000 / 512)."""
    from models.mask_rcnn.trainer import DetectorTrainer, set_stage
    from models.training import SegmentationSGD

    detector = load_ours(keras_path)
    set_stage(detector, "all")
    trainer = DetectorTrainer(detector, stage="all", seed=0)
    trainer.compile(optimizer=SegmentationSGD(TRAIN_LEARNING_RATE, momentum=0.9, l2=1e-4))
    batch = training_batch(photo(False), ground_truth())
    return lambda: trainer.train_on_batch(batch, return_dict=True)["loss"]


def training_step_torchvision(torch_path):
    """torchvision: a function running one train-mode forward, backward and SGD step on the same batch."""
    from benchmarks import torchvision_detector as tv

    model = tv.load_for_training(torch_path)
    optimizer = tv.sgd(model, TRAIN_LEARNING_RATE)
    images, targets = tv.training_inputs([photo(False)] * 2, ground_truth())
    return lambda: tv.train_step(model, optimizer, images, targets)


def run_training(torch_path, keras_path):
    """The training-step rows (full runs only): ours, torchvision's and the ratio, timed in turn."""
    ours, reference = training_step_ours(keras_path), training_step_torchvision(torch_path)
    losses = (float(ours()), reference())  # first calls (tracing) outside the timing; the losses as a check
    ours_time, tv_time = alternating_median_times([ours, reference], warmup=0, repeats=3)
    size = f"2x{FULL_SIZE[0]}x{FULL_SIZE[1]} resnet50"
    note = f"{len(TRAIN_BOXES)} instances/image; first-step loss {losses[0]:.2f}"
    return [
        Result("detector train step [ours]", size, ours_time, throughput=f"{2 / ours_time:.2f} img/s",
               note=note + "; DetectorTrainer(stage='all').train_on_batch"),
        Result("detector train step [torchvision]", size, tv_time, throughput=f"{2 / tv_time:.2f} img/s",
               note=f"{len(TRAIN_BOXES)} instances/image; first-step loss {losses[1]:.2f}; train(), SGD step"),
        Result("detector train step ours / torchvision", size, ours_time, ratio=ours_time / tv_time,
               target="<= 1.0", note="same weights, batch, threads; 2000 proposals, 512 RoIs, frozen BN, 3 stages"),
    ]

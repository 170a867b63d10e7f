"""Detector files: reading a detector back from any .keras the project writes, fine-tuning
initialisation from another, and the resize a run trained with.

- load_detector(path): the build_mask_rcnn model in a converted .keras
  (models.convert.torchvision), a run's checkpoint (a DetectorTrainer)
  or a detector saved on its own.
- init_from(detector, path): copies every weight of a detector (or of a
  torchvision-resnet50 backbone) whose shape matches; class-specific
  predictors of another class count are left as initialised.
- inference_sizes(checkpoint): the resize a run trained with, for evaluating
  and predicting the way it saw its images.
The oracle-box view of a detector (evaluate.py --boxes gt) is models/mask_rcnn/oracle.py.
"""
import json
import os

from models.checkpoints import MASK_RCNN, PSPNET, CheckpointError, check_kind, load_keras_file, model_kind
from models.mask_rcnn.detector import detector_layers
from models.precision import with_precision

# The predictors whose shapes follow the class count: left as initialised when fine-tuning on other classes.
CLASS_SPECIFIC = ("box_head/class_logits/", "box_head/box_deltas/", "mask_head/logits/")


def load_detector(path, flag="--checkpoint", hint="", precision="float32"):
    """The build_mask_rcnn model held by a .keras file (a detector, or a DetectorTrainer's `.detector`).

    precision: "float32", or "bfloat16" (models.precision.with_precision: the geometry layers and the
    outputs stay float32).

    Loaded with safe_mode (models.checkpoints.load_keras_file). Raises models.checkpoints.CheckpointError
    (a ValueError; one line naming `flag` and the file) when it cannot be read or holds another kind of model;
    for a PSPNet, the message ends with `hint` (what to pass instead, e.g. "pass --model pspnet").
    """
    import models  # noqa: F401  (registers the layers a file names)
    from models.mask_rcnn.trainer import DetectorTrainer  # noqa: F401  (likewise)

    model = load_keras_file(path, flag=flag)
    if model_kind(model) == PSPNET:
        check_kind(model, MASK_RCNN, path, flag=flag, hint=hint)
    model = getattr(model, "detector", model)
    if not is_detector(model):
        raise CheckpointError(f"{flag} {path}: holds a {type(model).__name__} named {model.name!r}, "
                              "not a Mask R-CNN detector")
    return with_precision(model, precision)


def is_detector(model):
    """True for a build_mask_rcnn model (it has every stage layer)."""
    try:
        detector_layers(model)
    except ValueError:
        return False
    return True


def init_from(detector, path):
    """Copies the weights of the model in `path` into `detector`; returns the names of the weights left as they were.

    path: a .keras detector (converted from torchvision, or any run's
    checkpoint), or a backbone (models.convert torchvision-resnet50: the
    ResNet named "backbone"). Weights are paired in order and copied where the
    shapes agree: a detector for other classes keeps its own class logits, box
    deltas and mask logits (CLASS_SPECIFIC). Raises ValueError for a model of
    another architecture (another number of weights, or another shape elsewhere).
    """
    import models  # noqa: F401  (registers the layers a file names)
    from models.mask_rcnn.trainer import DetectorTrainer  # noqa: F401  (likewise)

    source = load_keras_file(path, flag="--init-from")
    source = getattr(source, "detector", source)
    target = detector
    if not is_detector(source):  # a backbone on its own goes into the detector's backbone
        target = detector.get_layer("fpn").get_layer("backbone")
    if len(source.weights) != len(target.weights):
        raise ValueError(f"{path}: {len(source.weights)} weights, the model to initialise has "
                         f"{len(target.weights)}: another architecture (check --backbone, --variant, --base-width)")
    skipped = []
    for src, dst in zip(source.weights, target.weights):
        if tuple(src.shape) == tuple(dst.shape):
            dst.assign(src)
        elif dst.path.startswith(CLASS_SPECIFIC):
            skipped.append(dst.path)
        else:
            raise ValueError(f"{path}: {src.path} has shape {tuple(src.shape)}, the model to initialise "
                             f"{tuple(dst.shape)}: another architecture (check --base-width, --fpn-channels, "
                             "--mask-head-channels, --box-head-units)")
    return skipped


def inference_sizes(checkpoint, short_side=None, long_side=None):
    """{"short_side", "long_side"}: the ones given, else the run's config.json beside `checkpoint`, else 800 / 1333
    (torchvision's, what a converted model expects)."""
    sizes = {"short_side": 800, "long_side": 1333}
    run_config = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "config.json")
    if os.path.exists(run_config):
        with open(run_config) as f:
            saved = json.load(f)
        sizes = {key: saved.get(key, value) for key, value in sizes.items()}
    given = {"short_side": short_side, "long_side": long_side}
    return {key: given[key] or value for key, value in sizes.items()}

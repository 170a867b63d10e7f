"""Loading .keras files safely, and telling a PSPNet checkpoint from a Mask R-CNN one.

A .keras file is a zip of config.json (the model's layers) and the weights. Loading it
builds the layers the config names, so a file from elsewhere could run code: a `Lambda`
layer carries Python bytecode, and a class name resolves to whatever code is registered
under it. `load_keras_file` therefore
  - refuses any file whose config holds a Lambda layer (or a serialized Python function),
    before Keras sees it, whatever Keras's own safe-mode setting is;
  - loads with safe_mode=True, so only classes Keras and this project register are built,
    and refuses a file that names any other class;
and turns every refusal or failure into a CheckpointError whose str() is one line naming
the file (the CLIs print it without a traceback).
"""
import json
import os
import re
import zipfile


class CheckpointError(ValueError):
    """A checkpoint file a user gave that cannot be used; str() is one line naming the file."""


# What Keras writes for a Lambda layer and for a Python function serialized by value.
_CODE_CLASS_NAMES = ("Lambda", "__lambda__")


def _holds_code(config):
    """True when a (nested) Keras config names a Lambda layer or a serialized Python function."""
    if isinstance(config, dict):
        if config.get("class_name") in _CODE_CLASS_NAMES:
            return True
        return any(_holds_code(value) for value in config.values())
    if isinstance(config, list):
        return any(_holds_code(value) for value in config)
    return False


def load_keras_file(path, *, flag="--checkpoint", compile=False):
    """A .keras file -> the Keras model in it, built only from known classes (safe_mode=True).

    flag: how the user gave the path, for the message ("--checkpoint", "--weights", ...).
    compile: also restore the optimizer and losses (train.py's resume does; inference not).
    Raises CheckpointError (one line naming the file) for a missing file, a file that is not
    a .keras zip, a Lambda layer or serialized function, a class this project does not
    define, and any other failure to load.
    """
    import keras

    import models  # noqa: F401  (registers the layers and models the project's checkpoints name)

    where = f"{flag} {path}" if flag else str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{where}: no such file (a .keras file written by train.py or models.convert)")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{where}: not a .keras file (those are zip archives written by model.save; "
                              "a SavedModel or .h5 file needs converting first)")
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (KeyError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{where}: damaged .keras file (no readable config.json: {error})") from None
    if _holds_code(config):
        raise CheckpointError(f"{where}: refused: it holds a Lambda layer (Python code that would run on "
                              "loading); rebuild the model from registered layers, without Lambda")
    try:
        return keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as error:  # Keras raises TypeError/ValueError/... with multi-line texts: one line instead
        text = str(error)
        unknown = re.search(r"Could not locate (?:class|function) '([^']+)'", text)
        if unknown:
            raise CheckpointError(f"{where}: refused: it names {unknown.group(1)!r}, a class this project does not "
                                  "define (custom code is not loaded); use a checkpoint written by this "
                                  "project") from None
        if "Lambda" in text or "arbitrary code" in text:
            raise CheckpointError(f"{where}: refused: it holds Python code that would run on loading") from None
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise CheckpointError(f"{where}: cannot load it as a Keras model ({type(error).__name__}: {first})") from None


PSPNET, MASK_RCNN = "pspnet", "mask_rcnn"
KIND_NAMES = {PSPNET: "PSPNet", MASK_RCNN: "Mask R-CNN"}


def model_kind(model):
    """PSPNET, MASK_RCNN or None, from what the model is built of.

    A PSPNet (models.build_pspnet, the converters) has a layer named "logits" giving
    [B, H, W, C] scores; the Mask R-CNN models take RoIs (an input named "rois") or are
    one of its trainers (MaskHeadTrainer, DetectorTrainer) or are named mask_rcnn*.
    """
    from models.mask_rcnn import DetectorTrainer, MaskHeadTrainer

    if isinstance(model, (MaskHeadTrainer, DetectorTrainer)) or model.name.startswith("mask_rcnn"):
        return MASK_RCNN
    layer_names = {layer.name for layer in getattr(model, "layers", [])}
    input_names = {getattr(t, "name", "").split(":")[0] for t in getattr(model, "inputs", None) or []}
    if "rois" in input_names:
        return MASK_RCNN
    if "logits" in layer_names and len(model.get_layer("logits").output.shape) == 4:
        return PSPNET
    return None


def check_kind(model, kind, path, *, flag="--checkpoint", hint=""):
    """Raises CheckpointError unless `model` is of `kind`; returns model.

    hint: what the user can do instead, appended to the message: a string, or a dict by the
    kind found, e.g. {MASK_RCNN: "pass --model mask_rcnn"}.
    """
    found = model_kind(model)
    if found == kind:
        return model
    wanted = KIND_NAMES[kind]
    if found is None:
        raise CheckpointError(f"{flag} {path}: not a {wanted} checkpoint of this project (model {model.name!r})")
    hint = hint.get(found, "") if isinstance(hint, dict) else hint
    raise CheckpointError(f"{flag} {path}: a {KIND_NAMES[found]} checkpoint, not a {wanted} one"
                          + (f"; {hint}" if hint else ""))

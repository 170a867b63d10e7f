"""Loading the project's .keras files, and telling a PSPNet checkpoint from a Mask R-CNN one.

load_keras_file registers every class the project's files name, then reads the file
with models.keras_files.read_keras_file (safe_mode=True, Lambda layers refused, one-line
CheckpointError naming the file). model_kind / check_kind tell the two families apart, so
a checkpoint of the other family is refused naming the --model to pass.
"""
from models.keras_files import CheckpointError, read_keras_file  # noqa: F401  (raised by load_keras_file)


def load_keras_file(path, *, flag="--checkpoint", compile=False):
    """A .keras file of this project (any model family, a run's checkpoint too) -> the Keras model in it.

    Registers every class the project's files name, then reads the file safely
    (models.keras_files.read_keras_file: safe_mode=True, Lambda layers refused);
    raises CheckpointError, one line naming the file.
    """
    import losses  # noqa: F401  (registers the losses a compiled checkpoint names)
    import models  # noqa: F401  (registers the layers and models the project's checkpoints name)
    from models.mask_rcnn.trainer import DetectorTrainer  # noqa: F401  (a training run's checkpoint)

    return read_keras_file(path, flag=flag, compile=compile)


PSPNET, MASK_RCNN = "pspnet", "mask_rcnn"
KIND_NAMES = {PSPNET: "PSPNet", MASK_RCNN: "Mask R-CNN"}


def model_kind(model):
    """PSPNET, MASK_RCNN or None, from what the model is built of.

    A PSPNet (models.build_pspnet, the converters) has a layer named "logits" giving
    [B, H, W, C] scores; the Mask R-CNN models take RoIs (an input named "rois") or are
    its trainer (DetectorTrainer) or are named mask_rcnn*.
    """
    from models.mask_rcnn.trainer import DetectorTrainer

    if isinstance(model, DetectorTrainer) or model.name.startswith("mask_rcnn"):
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


def origin_lines(path, protocol=None):
    """What evaluate.py and predict.py say before they run: where a converted checkpoint came from (its
    provenance, if it records one) and a source's test protocol (anything but "ours"), one line each."""
    from models.keras_files import describe_provenance, read_provenance

    provenance = read_provenance(path)
    lines = [describe_provenance(provenance)] if provenance else []
    if protocol is not None and protocol.name != "ours":
        lines.append(protocol.describe())
    return lines

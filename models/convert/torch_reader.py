"""Reading PyTorch checkpoints into this project's Keras layers: the pieces every converter shares.

A converter (models.convert.CONVERTERS dispatches to them) reads a state dict with
`read_state_dict`, assigns its tensors layer by layer with `set_conv`,
`set_batch_norm`, `set_dense` (each converts the layout and checks the shape),
and ends with `StateDict.check_all_used`, so a checkpoint that does not fit the
model is refused with the missing and unexpected keys listed, never half-loaded.

torch is imported only here, and only when a checkpoint is read: the `.keras`
files the converters write need no torch.

Layouts: PyTorch conv kernels are [out, in, kh, kw] (Keras [kh, kw, in, out]),
transposed-conv kernels [in, out, kh, kw] (Keras [kh, kw, out, in]), linear
weights [out, in] (Keras [in, out]); BatchNorm's weight / bias / running_mean /
running_var are Keras's gamma / beta / moving_mean / moving_variance.
"""
import numpy as np

from data.errors import UserError
from data.progress import as_progress


class CheckpointMismatch(UserError, ValueError):
    """A checkpoint whose keys or shapes do not fit the model being converted into."""


class StateDict:
    """A checkpoint's tensors as float32 NumPy arrays, with a record of which keys were used.

    Args:
      tensors: {key: array}.
      source: the checkpoint's file name, for error messages.
      progress: a data.progress.Progress counting the tensors as they are used (None: shown on stderr);
        check_all_used ends it.
    """

    def __init__(self, tensors, source, progress=None):
        self.tensors = tensors
        self.source = source
        self.used = set()
        self.missing = []
        self.bar = as_progress(progress).bar(len(tensors), "assigning weights", unit="tensor")

    def _mark_used(self, keys):
        new = set(keys) - self.used
        self.used.update(new)
        self.bar.update(len(new))

    def __contains__(self, key):
        return key in self.tensors

    def get(self, key):
        """The array under `key` (marked used); a missing key is recorded and None returned."""
        if key not in self.tensors:
            self.missing.append(key)
            return None
        self._mark_used([key])
        return self.tensors[key]

    def ignore(self, predicate):
        """Marks keys the model has no use for (e.g. BatchNorm's num_batches_tracked) as used."""
        self._mark_used(k for k in self.tensors if predicate(k))

    def check_all_used(self):
        """Raises CheckpointMismatch listing missing and unexpected keys, if any."""
        unexpected = sorted(set(self.tensors) - self.used)
        if self.missing or unexpected:
            self.bar.abandon()
            raise CheckpointMismatch(
                f"{self.source}: checkpoint does not match the model: "
                f"missing keys {_abbreviate(self.missing)}; unexpected keys {_abbreviate(unexpected)}.")
        self.bar.close()


def _abbreviate(keys, limit=8):
    keys = list(keys)
    shown = ", ".join(keys[:limit]) or "none"
    return f"[{shown}{f', ... ({len(keys)} in all)' if len(keys) > limit else ''}]"


def read_state_dict(path, *, strip_prefixes=("module.",), progress=None):
    """Loads a PyTorch checkpoint without running code (torch.load(weights_only=True)).

    Accepts a bare state dict or one wrapped as {"state_dict": ...} or {"model": ...}
    (semseg, mmsegmentation, detectron2-style training checkpoints). Each key
    loses the first of `strip_prefixes` it starts with (DataParallel's "module.").
    progress: the StateDict's (its tensors counted as they are assigned).

    Returns:
      (StateDict, meta): the tensors, and the checkpoint's other top-level
      entries (e.g. mmsegmentation's "meta"), {} for a bare state dict.
    Raises:
      CheckpointMismatch: the file is not a PyTorch checkpoint of tensors.
    """
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch's own errors all mean "not a checkpoint"
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointMismatch(f"{path}: not a PyTorch weights checkpoint ({first_line}).") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointMismatch(f"{path}: expected a state dict, found a {type(checkpoint).__name__}.")
    meta = {}
    for wrapper in ("state_dict", "model"):
        if isinstance(checkpoint.get(wrapper), dict):
            meta = {k: v for k, v in checkpoint.items() if k != wrapper}
            checkpoint = checkpoint[wrapper]
            break
    tensors = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointMismatch(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor.")
        for prefix in strip_prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        tensors[key] = value.detach().to(torch.float32).numpy() if value.is_floating_point() else value.numpy()
    return StateDict(tensors, str(path), progress), meta


def _assign(layer, values, keys):
    for variable, value, key in zip(layer.weights, values, keys):
        if tuple(variable.shape) != value.shape:
            raise CheckpointMismatch(
                f"{key}: shape {value.shape} (converted) does not fit layer {layer.name!r} {tuple(variable.shape)}.")
    layer.set_weights(list(values))


def _take(state, keys):
    values = [state.get(k) for k in keys]
    return None if any(v is None for v in values) else values


def set_conv(layer, state, prefix, *, bias=None):
    """Keras Conv2D / Conv2DTranspose <- `{prefix}.weight` (and `{prefix}.bias`).

    bias: None reads the bias exactly when the Keras layer has one.
    """
    has_bias = layer.use_bias if bias is None else bias
    keys = [f"{prefix}.weight"] + ([f"{prefix}.bias"] if has_bias else [])
    values = _take(state, keys)
    if values is None:
        return
    # [out, in, kh, kw] -> [kh, kw, in, out]. Transposed convs store [in, out, kh, kw] and Keras
    # [kh, kw, out, in]: the same axis order, no kernel flip (checked against torch).
    values[0] = np.transpose(values[0], (2, 3, 1, 0))
    _assign(layer, [np.ascontiguousarray(v) for v in values], keys)


def set_batch_norm(layer, state, prefix):
    """Keras BatchNormalization <- `{prefix}.weight/.bias/.running_mean/.running_var`."""
    keys = [f"{prefix}.{name}" for name in ("weight", "bias", "running_mean", "running_var")]
    values = _take(state, keys)
    if values is not None:
        _assign(layer, values, keys)
    state.ignore(lambda k: k == f"{prefix}.num_batches_tracked")


def set_dense(layer, state, prefix, *, input_permutation=None):
    """Keras Dense <- `{prefix}.weight` [out, in] and `{prefix}.bias`.

    input_permutation: [in] int, Keras input index -> PyTorch input index, for a
    Dense that follows a flatten whose element order differs (PyTorch flattens
    [C, H, W], Keras [H, W, C]: see `chw_to_hwc_permutation`).
    """
    keys = [f"{prefix}.weight", f"{prefix}.bias"]
    values = _take(state, keys)
    if values is None:
        return
    kernel = values[0].T
    if input_permutation is not None:
        kernel = kernel[input_permutation]
    _assign(layer, [np.ascontiguousarray(kernel), values[1]], keys)


def chw_to_hwc_permutation(channels, height, width):
    """[H * W * C] int: for each position of an [H, W, C] flatten, its index in the [C, H, W] flatten."""
    return np.arange(channels * height * width).reshape(channels, height, width).transpose(1, 2, 0).reshape(-1)


def set_resnet(backbone, state, prefix, *, stem="standard", stem_prefix=None):
    """Copies a PyTorch ResNet (torchvision's key layout) into a `models.resnet.build_resnet` model.

    Keys: `{prefix}conv1`/`bn1` (standard stem) or `{prefix}conv1..3`/`bn1..3`
    (semseg's deep stem), `{prefix}layer{s}.{i}.conv{j}`/`bn{j}` and
    `{prefix}layer{s}.{i}.downsample.0/1`. A deep stem held in an nn.Sequential
    of (conv, BN, ReLU) x 3 (semseg's PSPNet `layer0.`, mmsegmentation's
    ResNetV1c `backbone.stem.`) is read from `{stem_prefix}0/1`, `3/4`, `6/7`
    instead. Build the Keras model with stride_on="3x3" (PyTorch's bottleneck)
    and bn_epsilon=1e-5 to compute what PyTorch computes. Missing keys are
    recorded in `state` (see check_all_used).
    """
    for layer in backbone.layers:
        if not layer.weights:
            continue
        name = layer.name  # conv1_conv, conv1_2_bn, conv3_block2_1_conv, conv4_block1_0_bn, ...
        base, kind = name.rsplit("_", 1)
        parts = base.split("_")
        if parts[0] == "conv1":
            index = parts[1] if len(parts) > 1 else "1"  # deep stem conv1_1..3 -> conv1..3 / bn1..3
            if stem == "standard" and index != "1":
                raise ValueError(f"layer {name!r} is not in a standard-stem ResNet.")
            if stem_prefix is not None:
                key = f"{stem_prefix}{3 * (int(index) - 1) + (kind != 'conv')}"
            else:
                key = f"{prefix}{'conv' if kind == 'conv' else 'bn'}{index}"
        else:
            stage, block, conv = int(parts[0][4:]), int(parts[1][5:]), int(parts[2])
            unit = f"{prefix}layer{stage - 1}.{block - 1}."
            if conv == 0:
                key = unit + ("downsample.0" if kind == "conv" else "downsample.1")
            else:
                key = unit + f"{'conv' if kind == 'conv' else 'bn'}{conv}"
        if kind == "conv":
            set_conv(layer, state, key)
        else:
            set_batch_norm(layer, state, key)

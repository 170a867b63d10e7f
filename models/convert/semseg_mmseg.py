"""PSPNet checkpoints published by semseg and mmsegmentation -> a Keras PSPNet that computes the same logits.

    python -m models.convert semseg-pspnet train_epoch_200.pth pspnet50_semseg.keras
    python -m models.convert mmseg-pspnet pspnet_r50-d8_512x1024_80k_cityscapes_20200606_112131-2376f12b.pth out.keras

Each source's model is rebuilt here with the matching layout (models/pspnet/model.py
LAYOUTS: what the weights do not show, such as stride placement, contracted
dilation, align_corners) and every tensor of the checkpoint is copied into it,
or the checkpoint is refused with its missing and unexpected keys listed.
Depth (block counts of layer1..4), width (layer1's first conv; 64 in every
published model), class count (the classifier's rows) and whether there is an
auxiliary head are read from the weights.

- semseg (hszhao/semseg, model/pspnet.py): `{'state_dict': ...}` with
  DataParallel's `module.` prefix; backbone `layer0.{0,1,3,4,6,7}` (deep stem
  conv/BN x 3), `layer1..4`; head `ppm.features.{i}.{1,2}`, `cls.{0,1,4}`, `aux.{0,1,4}`.
- mmsegmentation (PSPHead + FCNHead on ResNetV1c, the "R-xx-D8" models):
  `{'meta', 'state_dict'}`; `backbone.stem.{0,1,3,4,6,7}`, `backbone.layer1..4`,
  `decode_head.psp_modules.{i}.1.{conv,bn}`, `decode_head.bottleneck.{conv,bn}`,
  `decode_head.conv_seg`, `auxiliary_head.convs.0.{conv,bn}`, `auxiliary_head.conv_seg`.
  Dilation and align_corners leave no trace in the weights: they are read from
  the config text that mmsegmentation stores in meta["config"], parsed
  (models.convert.mmseg_config; its
  Cityscapes 769x769 models set align_corners=True: layout "mmseg_769x769");
  a checkpoint whose config is not "-D8" (dilations (1, 1, 2, 4),
  contract_dilation=True) is refused. Without a config, "-D8" with
  align_corners=False (the 512x1024 models) is assumed. The same config gives
  mmsegmentation's own test settings (test_cfg, the test pipeline's img_scale):
  convert_mmseg_with_test_settings returns them for the converted file's provenance.

Input normalisation: both sources feed (RGB - 255 * [0.485, 0.456, 0.406]) /
(255 * [0.229, 0.224, 0.225]) (semseg's tool/test.py; mmsegmentation's
data_preprocessor with bgr_to_rgb=True), which is this project's contract
(data.normalization.INPUT_MEAN / INPUT_STD): nothing is folded into the first conv.
"""
import dataclasses

from models.pspnet.model import build_pspnet
from models.resnet import resnet_depth
from models.convert.mmseg_config import parse_config_text, pspnet_settings, read_test_settings
from models.convert.torch_reader import CheckpointMismatch, read_state_dict, set_batch_norm, set_conv, set_resnet

BINS = (1, 2, 3, 6)  # both sources' pyramid (semseg's bins, mmsegmentation's pool_scales)


@dataclasses.dataclass(frozen=True)
class _Source:
    name: str
    layout: str
    backbone_prefix: str
    stem_prefix: str
    head_keys: dict  # Keras layer name (with "{b}" for a bin) -> PyTorch module prefix (with "{i}", the bin's index)


_SEMSEG = _Source("semseg", "semseg", "", "layer0.", {
    "ppm{b}_conv": "ppm.features.{i}.1", "ppm{b}_bn": "ppm.features.{i}.2",
    "head_conv": "cls.0", "head_bn": "cls.1", "head_classifier": "cls.4",
    "aux_conv": "aux.0", "aux_bn": "aux.1", "aux_classifier": "aux.4",
})
_MMSEG = _Source("mmsegmentation", "mmseg", "backbone.", "backbone.stem.", {
    "ppm{b}_conv": "decode_head.psp_modules.{i}.1.conv", "ppm{b}_bn": "decode_head.psp_modules.{i}.1.bn",
    "head_conv": "decode_head.bottleneck.conv", "head_bn": "decode_head.bottleneck.bn",
    "head_classifier": "decode_head.conv_seg",
    "aux_conv": "auxiliary_head.convs.0.conv", "aux_bn": "auxiliary_head.convs.0.bn",
    "aux_classifier": "auxiliary_head.conv_seg",
})


def convert_semseg(checkpoint, *, progress=None):
    """hszhao/semseg PSPNet checkpoint (.pth) -> PSPNet(layout="semseg") keras.Model holding its weights.

    Raises CheckpointMismatch (one line naming the file) for a checkpoint that does not fit.
    progress: a data.progress.Progress over the tensors assigned (None: shown on stderr).
    """
    return _convert(checkpoint, _SEMSEG, progress)


def convert_mmseg(checkpoint, *, progress=None):
    """mmsegmentation PSPNet R-50/101-D8 checkpoint (.pth) -> PSPNet(layout="mmseg" or "mmseg_769x769") keras.Model.

    Raises CheckpointMismatch (one line naming the file) for a checkpoint that does not fit.
    progress: a data.progress.Progress over the tensors assigned (None: shown on stderr).
    """
    return convert_mmseg_with_test_settings(checkpoint, progress=progress)[0]


def convert_mmseg_with_test_settings(checkpoint, *, progress=None):
    """convert_mmseg, and mmsegmentation's own test settings read from the same single read of the checkpoint.

    Returns (model, test_settings): mmseg_config.read_test_settings of the config text the checkpoint
    stores ({mode, crop_size, stride, img_scale}, each where it says it), None without a config.
    models.convert.convert_checkpoint records them in the converted file's provenance.
    """
    state, meta = read_state_dict(checkpoint, progress=progress)
    config = _mmseg_config(meta, checkpoint)
    settings = pspnet_settings(config, checkpoint) if config is not None else None
    layout = "mmseg_769x769" if settings and settings["align_corners"] else "mmseg"
    model = _build(checkpoint, state, _MMSEG, layout)
    return model, (read_test_settings(config, settings["test_cfg"]) if settings is not None else None)


def _convert(checkpoint, source, progress):
    state, _ = read_state_dict(checkpoint, progress=progress)
    return _build(checkpoint, state, source, source.layout)


def _build(checkpoint, state, source, layout):
    """The PSPNet of `layout` holding the tensors of `state` (named as `source` names them)."""
    classifier_key = source.head_keys["head_classifier"] + ".weight"
    if classifier_key not in state:
        raise CheckpointMismatch(
            f"{checkpoint}: not a {source.name} PSPNet checkpoint: missing keys [{classifier_key}]; "
            f"it has [{', '.join(sorted(state.tensors)[:6])}, ...].")
    depth = _depth(state, source, checkpoint)
    num_classes = int(state.tensors[classifier_key].shape[0])
    aux = source.head_keys["aux_classifier"] + ".weight" in state
    width_key = f"{source.backbone_prefix}layer1.0.conv1.weight"
    if width_key not in state:
        raise CheckpointMismatch(f"{checkpoint}: checkpoint does not match the model: missing keys [{width_key}].")
    base_width = int(state.tensors[width_key].shape[0])
    model = build_pspnet(num_classes, f"resnet{depth}", aux, layout=layout, bins=BINS, base_width=base_width)
    set_resnet(model.get_layer("backbone"), state, source.backbone_prefix, stem="deep",
               stem_prefix=source.stem_prefix)
    for layer in model.layers:
        if not layer.weights or layer.name == "backbone":
            continue
        key = _head_key(layer.name, source)
        if layer.name.endswith("_bn"):
            set_batch_norm(layer, state, key)
        else:  # classifiers have a bias; PPM, head and aux convs (followed by BN) have none
            set_conv(layer, state, key, bias=layer.name.endswith("_classifier"))
    state.check_all_used()
    return model


def _mmseg_config(meta, checkpoint):
    """The parsed config text in an mmsegmentation checkpoint's meta, or None if it has none."""
    info = meta.get("meta") if isinstance(meta.get("meta"), dict) else {}
    text = info.get("config", info.get("cfg"))  # 0.x stores "config", mmengine-era checkpoints "cfg"
    return parse_config_text(text, checkpoint) if isinstance(text, str) else None


def _head_key(layer_name, source):
    if layer_name.startswith("ppm"):
        b = int(layer_name[3:].split("_")[0])
        pattern = source.head_keys["ppm{b}_" + layer_name.rsplit("_", 1)[1]]
        return pattern.format(i=BINS.index(b))
    return source.head_keys[layer_name]


def _depth(state, source, checkpoint):
    """ResNet depth from the number of blocks in layer1..4 of a bottleneck backbone."""
    prefix = source.backbone_prefix
    if f"{prefix}layer1.0.conv1.weight" in state and f"{prefix}layer1.0.conv3.weight" not in state:
        raise CheckpointMismatch(f"{checkpoint}: a ResNet-18/34 (basic block) PSPNet: only ResNet-50/101/152 "
                                 f"{source.name} checkpoints are supported.")
    if f"{source.stem_prefix}0.weight" not in state:
        raise CheckpointMismatch(f"{checkpoint}: missing keys [{source.stem_prefix}0.weight]: not a deep-stem "
                                 f"{source.name} PSPNet (mmsegmentation's R-xxb models have a 7x7 stem).")
    blocks = [len({key.split(".")[len(prefix.split("."))] for key in state.tensors
                   if key.startswith(f"{prefix}layer{stage}.")}) for stage in range(1, 5)]
    depth = resnet_depth("bottleneck", blocks)
    if depth is None:
        raise CheckpointMismatch(f"{checkpoint}: {prefix}layer1..4 have {blocks} blocks: not ResNet-50/101/152.")
    return depth

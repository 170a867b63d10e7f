"""Published PyTorch checkpoints -> this project's .keras models (python -m models.convert SOURCE IN OUT).

Modules:
    torch_reader   reading a PyTorch state dict (torch.load(weights_only=True)) into Keras layers, with
                   missing / unexpected keys reported
    torchvision    torchvision's Mask R-CNN (v1, v2) and ImageNet ResNet-50
    semseg_mmseg   hszhao/semseg's and mmsegmentation's Cityscapes PSPNets
    mmseg_config   the config text mmsegmentation stores in a checkpoint, parsed
    provenance     the SHA-256 a published file's name carries, checked; where a converted file came from
    command        the command line
torch is needed only to read the checkpoint; the .keras file loads without it.
"""
import importlib
import os

from models.convert import provenance

# SOURCE -> (module, function). The function takes the checkpoint's path (and progress=) and returns the keras.Model
# holding its weights, or raises models.convert.torch_reader.CheckpointMismatch. Modules are imported
# only for the SOURCE asked for (torch is imported by them).
CONVERTERS = {
    "semseg-pspnet": ("models.convert.semseg_mmseg", "convert_semseg"),
    "mmseg-pspnet": ("models.convert.semseg_mmseg", "convert_mmseg"),
    "torchvision-maskrcnn": ("models.convert.torchvision", "convert_maskrcnn"),
    "torchvision-maskrcnn-v2": ("models.convert.torchvision", "convert_maskrcnn_v2"),
    "torchvision-resnet50": ("models.convert.torchvision", "convert_resnet50"),
}
# SOURCE -> (module, function) that also returns the source's own test settings read from the checkpoint
# (model, test_settings or None), in the same single read: convert_checkpoint records them in the provenance.
WITH_TEST_SETTINGS = {
    "mmseg-pspnet": ("models.convert.semseg_mmseg", "convert_mmseg_with_test_settings"),
}


def convert(source, checkpoint, *, progress=None):
    """The keras.Model holding the weights of `checkpoint` (a path), read as SOURCE (a CONVERTERS key) publishes it.

    progress: a data.progress.Progress over the checkpoint's tensors as they are assigned (None: shown on stderr).
    """
    module_name, function_name = CONVERTERS[source]
    return getattr(importlib.import_module(module_name), function_name)(checkpoint, progress=progress)


def convert_checkpoint(source, checkpoint, out, *, check_hash=True, progress=None):
    """Converts `checkpoint` and writes OUT (.keras) with its provenance; returns the keras.Model.

    check_hash: refuse a file whose SHA-256 does not start with the digits its name carries
    (provenance.check_hash) before reading it. progress: as convert's.
    """
    digest = provenance.sha256(checkpoint)
    if check_hash:
        provenance.check_hash(checkpoint, digest)
    if source in WITH_TEST_SETTINGS:
        module_name, function_name = WITH_TEST_SETTINGS[source]
        model, test_settings = getattr(importlib.import_module(module_name), function_name)(checkpoint,
                                                                                           progress=progress)
    else:
        model, test_settings = convert(source, checkpoint, progress=progress), None
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    model.save(out)
    provenance.write_provenance(out, provenance.record(source, checkpoint, digest, model, test_settings))
    return model

"""Checkpoints checked as they arrive, and converted files that say where they came from.

- The hash in a published file's name: torchvision's `...-bf2d0c1e.pth` and
  mmsegmentation's `..._112131-2376f12b.pth` end in the first hex digits of
  the file's SHA-256 (torch.hub checks it the same way; OpenMMLab's
  publish_model names files so). check_hash refuses a file whose digest does
  not start with them: a truncated or damaged download, one line naming both.
- The record a converted .keras carries (provenance.json inside the .keras zip,
  beside Keras's own entries, which Keras ignores when loading): the source, the
  file name, its SHA-256, and, when the file is a known release, its name, the
  metric its source publishes for it and the protocol that measures it, and the
  source's own test settings where the checkpoint states them ("test_settings").
  models.keras_files.read_provenance reads it back; describe() is the one line
  predict.py and evaluate.py print.
"""
import dataclasses
import hashlib
import json
import os
import re
import zipfile

from models.keras_files import PROVENANCE_ENTRY
from models.convert.torch_reader import CheckpointMismatch

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt)$")


class HashMismatch(CheckpointMismatch):
    """A published checkpoint whose SHA-256 does not start with the digits its file name carries."""


@dataclasses.dataclass(frozen=True)
class Release:
    """A published checkpoint: what its source reports for it, and how that figure is measured."""

    name: str
    metric: str
    protocol: str


_TORCHVISION_COCO = "COCO val2017, torchvision references/detection (engine.evaluate, coco_eval.py)"
_MMSEG_WHOLE = "Cityscapes val, mmsegmentation EncoderDecoder whole-image test at 2048x1024 (ms+flip: ratios 0.5-1.75)"
_MMSEG_SLIDE = ("Cityscapes val, mmsegmentation EncoderDecoder slide test, 769x769 windows, stride 513 "
                "(ms+flip: ratios 0.5-1.75)")
_SEMSEG = ("Cityscapes val, semseg tool/test.py: base size 2048, 713x713 windows, stride 476, flip "
           "(ms: scales 0.5-1.75)")

# File name -> Release, as each source's model zoo lists them (torchvision's weights enums,
# mmsegmentation's configs/pspnet metafile).
RELEASES = {
    "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth": Release(
        "torchvision MaskRCNN_ResNet50_FPN_Weights.COCO_V1", "box AP 37.9, mask AP 34.6", _TORCHVISION_COCO),
    "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth": Release(
        "torchvision MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1", "box AP 47.4, mask AP 41.8", _TORCHVISION_COCO),
    "resnet50-0676ba61.pth": Release(
        "torchvision ResNet50_Weights.IMAGENET1K_V1", "ImageNet top-1 76.130", "ImageNet val, torchvision"),
    "resnet50-11ad3fa6.pth": Release(
        "torchvision ResNet50_Weights.IMAGENET1K_V2", "ImageNet top-1 80.858", "ImageNet val, torchvision"),
    "pspnet_r50-d8_512x1024_40k_cityscapes_20200605_003338-2966598c.pth": Release(
        "mmsegmentation pspnet_r50-d8_512x1024_40k_cityscapes", "mIoU 77.85 (ms+flip 79.18)", _MMSEG_WHOLE),
    "pspnet_r101-d8_512x1024_40k_cityscapes_20200604_232751-467e7cf4.pth": Release(
        "mmsegmentation pspnet_r101-d8_512x1024_40k_cityscapes", "mIoU 78.34 (ms+flip 79.74)", _MMSEG_WHOLE),
    "pspnet_r50-d8_769x769_40k_cityscapes_20200606_112725-86638686.pth": Release(
        "mmsegmentation pspnet_r50-d8_769x769_40k_cityscapes", "mIoU 78.26 (ms+flip 79.88)", _MMSEG_SLIDE),
    "pspnet_r101-d8_769x769_40k_cityscapes_20200606_112753-61c6f5be.pth": Release(
        "mmsegmentation pspnet_r101-d8_769x769_40k_cityscapes", "mIoU 79.08 (ms+flip 80.28)", _MMSEG_SLIDE),
    "pspnet_r50-d8_512x1024_80k_cityscapes_20200606_112131-2376f12b.pth": Release(
        "mmsegmentation pspnet_r50-d8_512x1024_80k_cityscapes", "mIoU 78.55 (ms+flip 79.79)", _MMSEG_WHOLE),
    "pspnet_r101-d8_512x1024_80k_cityscapes_20200606_112211-e1e1100f.pth": Release(
        "mmsegmentation pspnet_r101-d8_512x1024_80k_cityscapes", "mIoU 79.76 (ms+flip 81.01)", _MMSEG_WHOLE),
    "pspnet_r50-d8_769x769_80k_cityscapes_20200606_210121-5ccf03dd.pth": Release(
        "mmsegmentation pspnet_r50-d8_769x769_80k_cityscapes", "mIoU 79.59 (ms+flip 80.69)", _MMSEG_SLIDE),
    "pspnet_r101-d8_769x769_80k_cityscapes_20200606_225055-dba412fa.pth": Release(
        "mmsegmentation pspnet_r101-d8_769x769_80k_cityscapes", "mIoU 79.77 (ms+flip 81.06)", _MMSEG_SLIDE),
}
# semseg publishes every Cityscapes model as train_epoch_200.pth (in exp/cityscapes/pspnet50 or pspnet101):
# the name alone does not tell them apart, the converted model's depth does.
SEMSEG_RELEASES = {
    50: Release("semseg exp/cityscapes/pspnet50 train_epoch_200", "mIoU 77.30 (ms 78.38)", _SEMSEG),
    101: Release("semseg exp/cityscapes/pspnet101 train_epoch_200", "mIoU 78.63 (ms 79.29)", _SEMSEG),
}


def expected_hash(path):
    """The SHA-256 prefix a published file's name carries ("bf2d0c1e"), or None."""
    match = _HASH_IN_NAME.search(os.path.basename(str(path)))
    return match.group(1) if match else None


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_hash(path, digest=None):
    """Raises HashMismatch unless the file's SHA-256 starts with the prefix in its name (if it has one)."""
    prefix = expected_hash(path)
    digest = digest or sha256(path)
    if prefix and not digest.startswith(prefix):
        raise HashMismatch(f"{path}: SHA-256 {digest[:len(prefix)]}... does not match the {prefix} its name "
                           "carries: a truncated or damaged download? Download it again (--no-check-hash skips "
                           "this check, e.g. for a file renamed by hand)")


def record(source, path, digest, model, test_settings=None):
    """The provenance of `model` converted from `path` (SHA-256 `digest`) as SOURCE (a CONVERTERS key).

    test_settings: the source's own test of the model as its checkpoint states it (mmsegmentation:
    {mode, crop_size, stride, img_scale}; evaluate.py --protocol mmseg reads them), kept under
    "test_settings" when given.
    """
    name = os.path.basename(str(path))
    release = RELEASES.get(name)
    if release is None and source == "semseg-pspnet" and name == "train_epoch_200.pth":
        config = model.get_config()
        if config.get("num_classes") == 19:  # semseg's Cityscapes models have 19 classes
            release = SEMSEG_RELEASES.get(int(str(config.get("backbone", "")).removeprefix("resnet") or 0))
    result = {"source": source, "file": name, "sha256": digest}
    if release is not None:
        result["release"] = dataclasses.asdict(release)
    if test_settings:
        result["test_settings"] = test_settings
    return result


def write_provenance(keras_path, provenance):
    """Adds provenance.json to a .keras file written by model.save (Keras loads the file as before)."""
    with zipfile.ZipFile(keras_path, "a") as archive:
        archive.writestr(PROVENANCE_ENTRY, json.dumps(provenance, indent=1))

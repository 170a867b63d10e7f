"""Checkpoints as their sources publish them: mmsegmentation's stored config text (written by its own Config),
full 0.x meta, the SHA-256 in a published file's name, and the provenance a converted .keras carries."""
import hashlib
import shutil

import keras
import pytest
import torch
from mmengine import Config

from benchmarks.torch_pspnet import MmsegPSPNet, randomize
from models.convert import convert_checkpoint
from models.convert.mmseg_config import NOT_READ, parse_config_text, pspnet_settings
from models.convert.provenance import HashMismatch, expected_hash
from models.convert.torch_reader import CheckpointMismatch
from models.keras_files import describe_provenance, read_provenance

RELEASE_769 = "pspnet_r50-d8_769x769_80k_cityscapes_20200606_210121-5ccf03dd.pth"


def _mmseg_pretty_text(align_corners=True, dilations=(1, 1, 2, 4)):
    """The config text of mmsegmentation's pspnet_r50-d8_769x769 Cityscapes config, as its Config writes it
    (mmengine's Config.pretty_text, what mmsegmentation stores in a checkpoint's meta)."""
    norm_cfg = dict(type="SyncBN", requires_grad=True)
    head = dict(norm_cfg=norm_cfg, align_corners=align_corners, loss_decode=dict(type="CrossEntropyLoss",
                                                                                 loss_weight=1.0))
    return Config(dict(
        norm_cfg=norm_cfg, crop_size=(769, 769),
        model=dict(
            type="EncoderDecoder", pretrained="open-mmlab://resnet50_v1c",
            backbone=dict(type="ResNetV1c", depth=50, num_stages=4, out_indices=(0, 1, 2, 3), dilations=dilations,
                          strides=(1, 2, 1, 1), norm_cfg=norm_cfg, norm_eval=False, style="pytorch",
                          contract_dilation=True),
            decode_head=dict(type="PSPHead", in_channels=2048, channels=512, pool_scales=(1, 2, 3, 6),
                             dropout_ratio=0.1, num_classes=19, **head),
            auxiliary_head=dict(type="FCNHead", in_channels=1024, channels=256, num_convs=1, num_classes=19,
                                **head),
            train_cfg=dict(), test_cfg=dict(mode="slide", crop_size=(769, 769), stride=(513, 513))),
        test_pipeline=[dict(type="LoadImageFromFile"),
                       dict(type="MultiScaleFlipAug", img_scale=(2049, 1025), flip=False,
                            transforms=[dict(type="Resize", keep_ratio=True), dict(type="ImageToTensor",
                                                                                    keys=["img"])])],
    )).pretty_text


def _save_mmseg_0x(model, path, config_text):
    """As mmcv 1.x's save_checkpoint in an mmsegmentation 0.x run, then publish_model (optimizer dropped)."""
    classes = ("road", "sidewalk", "building", "wall")
    meta = {"mmcv_version": "1.0.5", "time": "Sat Jun  6 21:01:21 2020",
            "env_info": "sys.platform: linux\nPython: 3.7.7\nCUDA available: True\nPyTorch: 1.5.0",
            "seed": None, "exp_name": "pspnet_r50-d8_769x769_80k_cityscapes.py", "mmseg_version": "0.5.0+b2724da",
            "config": config_text, "CLASSES": classes, "PALETTE": [[128, 64, 128], [244, 35, 232], [70, 70, 70],
                                                                    [102, 102, 156]],
            "epoch": 1, "iter": 80000}
    torch.save({"meta": meta, "state_dict": model.state_dict()}, path)


def test_config_text_from_mmsegmentations_own_config_is_parsed():
    text = _mmseg_pretty_text()
    assert "dilations=(\n" in text  # one element per line with a trailing comma: what string matching missed
    config = parse_config_text(text)
    assert config["model"]["backbone"]["dilations"] == (1, 1, 2, 4)
    assert config["model"]["decode_head"]["norm_cfg"] == {"type": "SyncBN", "requires_grad": True}
    assert pspnet_settings(config, "m.pth") == {
        "align_corners": True, "test_cfg": {"mode": "slide", "crop_size": (769, 769), "stride": (513, 513)}}
    with pytest.raises(CheckpointMismatch, match=r"m\.pth: its config is not a ResNetV1c \"-D8\" backbone "
                                                 r"\(dilations=\(1, 1, 1, 1\);"):
        pspnet_settings(parse_config_text(_mmseg_pretty_text(dilations=(1, 1, 1, 1))), "m.pth")


def test_config_text_is_never_run():
    config = parse_config_text("import os\nx = os.system('echo no')\ny = dict(a=-1, b=[1, 2.5], c=None)\nz = y\n")
    assert config == {"x": NOT_READ, "y": {"a": -1, "b": [1, 2.5], "c": None}, "z": {"a": -1, "b": [1, 2.5],
                                                                                     "c": None}}
    with pytest.raises(CheckpointMismatch, match=r"m\.pth: the config text stored in the checkpoint does not parse"):
        parse_config_text("model = dict(", "m.pth")


def test_an_mmseg_0x_checkpoint_as_published_converts_with_its_provenance(tmp_path, torch_seed):
    reference = randomize(MmsegPSPNet(50, classes=4, width=8, align_corners=True), seed=5)
    published = tmp_path / RELEASE_769
    _save_mmseg_0x(reference, published, _mmseg_pretty_text())
    out = tmp_path / "m.keras"
    # The name's hash is the real release's, not this file's: only --no-check-hash lets it through.
    with pytest.raises(HashMismatch, match=rf"{RELEASE_769}: SHA-256 [0-9a-f]{{8}}\.\.\. does not match the "
                                           r"5ccf03dd its name carries"):
        convert_checkpoint("mmseg-pspnet", str(published), str(out))
    assert not out.exists()
    model = convert_checkpoint("mmseg-pspnet", str(published), str(out), check_hash=False)
    assert model.layout == "mmseg_769x769"

    loaded = keras.saving.load_model(out, safe_mode=True, compile=False)  # the extra entry does not disturb Keras
    assert loaded.get_config()["layout"] == "mmseg_769x769"
    provenance = read_provenance(out)
    assert provenance["sha256"] == hashlib.sha256(published.read_bytes()).hexdigest()
    assert (provenance["source"], provenance["file"]) == ("mmseg-pspnet", RELEASE_769)
    assert provenance["release"]["metric"] == "mIoU 79.59 (ms+flip 80.69)"
    # mmsegmentation's own test, as the config's test_cfg and test pipeline state it (--protocol mmseg reads it).
    assert provenance["test_settings"] == {"mode": "slide", "crop_size": [769, 769], "stride": [513, 513],
                                           "img_scale": [2049, 1025]}
    assert describe_provenance(provenance).startswith(f"converted from {RELEASE_769} (mmseg-pspnet, sha256 ")


def test_a_truncated_download_is_refused_before_it_is_read(tmp_path, torch_seed):
    reference = randomize(MmsegPSPNet(50, classes=4, width=8), seed=6)
    plain = tmp_path / "plain.pth"
    _save_mmseg_0x(reference, plain, _mmseg_pretty_text(align_corners=False))
    prefix = hashlib.sha256(plain.read_bytes()).hexdigest()[:8]
    named = tmp_path / f"pspnet_mine-{prefix}.pth"
    shutil.copy(plain, named)
    assert expected_hash(named) == prefix and expected_hash(plain) is None
    assert convert_checkpoint("mmseg-pspnet", str(named), str(tmp_path / "ok.keras")).layout == "mmseg"
    assert read_provenance(tmp_path / "ok.keras") == {
        "source": "mmseg-pspnet", "file": named.name, "sha256": hashlib.sha256(named.read_bytes()).hexdigest(),
        "test_settings": {"mode": "slide", "crop_size": [769, 769], "stride": [513, 513], "img_scale": [2049, 1025]}}

    named.write_bytes(plain.read_bytes()[:-1000])  # a download cut short
    with pytest.raises(HashMismatch, match=rf"pspnet_mine-{prefix}\.pth: SHA-256 .* does not match the {prefix}"):
        convert_checkpoint("mmseg-pspnet", str(named), str(tmp_path / "cut.keras"))
    assert not (tmp_path / "cut.keras").exists()

"""A converted mmsegmentation checkpoint through the commands: its provenance is printed in one line, and
--protocol mmseg tests it with the settings its config states (test_cfg, the test pipeline's img_scale), which
the conversion recorded."""
import os

import numpy as np
import torch
from PIL import Image

import predict
from benchmarks.torch_pspnet import MmsegPSPNet, randomize
from data import cityscapes
from models.convert import convert_checkpoint
from models.convert.mmseg_config import parse_config_text, pspnet_settings, read_test_settings
from models.keras_files import describe_provenance, read_provenance
from models.pspnet.inference import load_inference_model
from models.pspnet.protocols import mmseg_predict

# An mmsegmentation 0.x config as its Config writes one (top-level variables; data.test.pipeline names
# test_pipeline's value), with a small test so that the model runs in seconds here.
CONFIG_0X = """norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    backbone=dict(type='ResNetV1c', depth=50, dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
                  norm_cfg=dict(type='SyncBN', requires_grad=True), contract_dilation=True),
    decode_head=dict(type='PSPHead', pool_scales=(1, 2, 3, 6), num_classes=19, align_corners=False),
    test_cfg=dict(mode='slide', crop_size=(40, 48), stride=(27, 32)))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=(97, 65), flip=False,
         transforms=[dict(type='Resize', keep_ratio=True), dict(type='RandomFlip')])
]
data = dict(samples_per_gpu=2, test=dict(type='CityscapesDataset', pipeline=[
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=[(97, 65)], flip=False, transforms=[])
]))
"""


def test_test_settings_are_read_from_the_test_pipeline():
    config = parse_config_text(CONFIG_0X)
    assert read_test_settings(config, pspnet_settings(config, "m.pth")["test_cfg"]) == {
        "mode": "slide", "crop_size": [40, 48], "stride": [27, 32], "img_scale": [97, 65]}
    whole = parse_config_text(CONFIG_0X.replace("mode='slide'", "mode='whole'").replace("(97, 65)", "(2048, 1024)"))
    assert read_test_settings(whole, {"mode": "whole"}) == {"mode": "whole", "img_scale": [2048, 1024]}
    assert read_test_settings({}, {}) == {}


def test_converted_file_prints_its_provenance_and_runs_its_own_test(tmp_path, torch_seed, capsys):
    reference = randomize(MmsegPSPNet(50, classes=19, width=8), seed=12)
    with torch.no_grad():  # identity BatchNorms, no classifier bias: the classes then follow the image
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.zero_(), module.running_var.fill_(1), module.weight.fill_(1), module.bias.zero_()
        reference.decode_head.conv_seg.bias.zero_()
    checkpoint = tmp_path / "pspnet_mine.pth"
    torch.save({"meta": {"mmseg_version": "0.5.0", "config": CONFIG_0X}, "state_dict": reference.state_dict()},
               checkpoint)
    converted = str(tmp_path / "m.keras")
    convert_checkpoint("mmseg-pspnet", str(checkpoint), converted, check_hash=False)
    rgb = np.random.default_rng(0).integers(0, 256, (49, 65, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    capsys.readouterr()

    predict.main(["--checkpoint", converted, str(tmp_path / "photo.png"), "--out", str(tmp_path / "out"),
                  "--protocol", "mmseg", "--quiet"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == describe_provenance(read_provenance(converted))
    assert lines[0].startswith("converted from pspnet_mine.pth (mmseg-pspnet, sha256 ")
    assert lines[1] == ("--protocol mmseg: mode slide, test_scale 97x65, crop 40x48, stride 27x32, ratios 1.0, "
                        "flip False (the test settings the checkpoint's config states)")
    _, labels = mmseg_predict(load_inference_model(converted), rgb, mode="slide", test_scale=(97, 65),
                              crop=(40, 48), stride=(27, 32))
    assert len(np.unique(labels)) > 1
    written = np.asarray(Image.open(os.path.join(tmp_path, "out", "photo_labelIds.png")))
    np.testing.assert_array_equal(written, cityscapes.to_label_ids(labels))

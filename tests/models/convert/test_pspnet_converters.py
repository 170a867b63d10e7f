"""semseg and mmsegmentation PSPNet checkpoints -> Keras, against the original PyTorch models on a real photo.

The references are the two projects' models rewritten in plain torch
(benchmarks/torch_pspnet.py says why and from what), with random
weights and every BatchNorm's statistics and affine parameters randomised, saved
the way each project saves its checkpoints, and converted through
`python -m models.convert`'s main.
"""
import glob
import os
import subprocess
import sys

import keras
import matplotlib.cbook
import numpy as np
import pytest
import tensorflow as tf
import torch
from PIL import Image

from benchmarks.torch_pspnet import MmsegPSPNet, SemsegPSPNet, randomize
from models.convert import command as convert
from models.pspnet import inference_model
from data.normalization import INPUT_MEAN, INPUT_STD
from tests.cli.cityscapes_fixtures import official_train_ids, reference_scores

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _photo(height, width):
    """Grace Hopper (matplotlib's sample photo), resized to `width` and cropped to `height`, normalised: [1, H, W, 3]."""
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        image = image.convert("RGB").resize((width, round(width * image.height / image.width)), Image.BILINEAR)
        rgb = np.asarray(image, np.float32)[:height]
    return ((rgb - np.array(INPUT_MEAN, np.float32)) / np.array(INPUT_STD, np.float32))[None]


def _save_semseg(model, path):
    """As semseg's tool/train.py: epoch, DataParallel/DDP state dict ('module.' prefix) and the optimizer."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 200, "state_dict": state, "optimizer": optimizer.state_dict()}, path)


def _mmseg_config(align_corners=False, dilations="(1, 1, 2, 4)"):
    """The model part of the config text mmsegmentation 0.x stores in meta["config"] (cfg.pretty_text)."""
    head = f"norm_cfg=dict(type='SyncBN', requires_grad=True),\n        align_corners={align_corners},"
    return (f"norm_cfg = dict(type='SyncBN', requires_grad=True)\nmodel = dict(\n    type='EncoderDecoder',\n"
            f"    backbone=dict(\n        type='ResNetV1c',\n        depth=50,\n        dilations={dilations},\n"
            f"        strides=(1, 2, 1, 1),\n        style='pytorch',\n        contract_dilation=True),\n"
            f"    decode_head=dict(\n        type='PSPHead',\n        {head}),\n"
            f"    auxiliary_head=dict(\n        type='FCNHead',\n        {head}))\n")


def _save_mmseg(model, path, config=None):
    """As mmsegmentation publishes: {'meta': {...}, 'state_dict': ...} (no prefix)."""
    meta = {"mmseg_version": "0.5.0+b2724da", "CLASSES": ("road", "sidewalk"),
            "PALETTE": [[128, 64, 128], [244, 35, 232]],
            "config": _mmseg_config(getattr(model, "align_corners", False)) if config is None else config}
    torch.save({"meta": meta, "state_dict": model.state_dict()}, path)


def _compare(keras_model, torch_model, image):
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(image.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    got = inference_model(keras_model)(image).numpy()
    assert got.shape == expected.shape
    agreement = np.mean(got.argmax(-1) == expected.argmax(-1))
    tolerance = 1e-3 * (expected.max() - expected.min())
    assert agreement >= 0.995, agreement
    assert np.abs(got - expected).max() <= tolerance, (np.abs(got - expected).max(), tolerance)
    return got


@pytest.mark.slow
@pytest.mark.parametrize("source", ["semseg", "mmseg"])
def test_resnet50_checkpoint_gives_the_original_logits(tmp_path, torch_seed, source):
    # Real width and depth (PSPNet R-50, 19 classes) on a 97 x 129 photo: (H - 1) % 8 == 0 as semseg requires.
    reference = randomize(SemsegPSPNet(50) if source == "semseg" else MmsegPSPNet(50), seed=1)
    checkpoint, out = tmp_path / "model.pth", tmp_path / "model.keras"
    (_save_semseg if source == "semseg" else _save_mmseg)(reference, checkpoint)
    convert.main([f"{source}-pspnet", str(checkpoint), str(out)])

    loaded = keras.saving.load_model(out, safe_mode=True, compile=False)
    config = loaded.get_config()
    assert (config["layout"], config["backbone"], config["num_classes"], config["aux"]) == (source, "resnet50", 19, True)
    trainable = sum(int(np.prod(w.shape)) for w in loaded.trainable_weights)
    assert trainable == {"semseg": 49_080_038, "mmseg": 48_975_494}[source]
    _compare(loaded, reference, _photo(97, 129))


@pytest.mark.parametrize("source, depth, size", [("semseg", 101, (57, 81)), ("mmseg", 152, (51, 70))])
def test_depth_width_and_classes_are_read_from_the_weights(tmp_path, torch_seed, source, depth, size):
    # Reduced width (8) keeps the deep variants fast; the real width is covered above.
    if source == "semseg":
        reference = randomize(SemsegPSPNet(depth, classes=7, width=8), seed=2)
    else:
        reference = randomize(MmsegPSPNet(depth, classes=7, width=8), seed=2)
    checkpoint, out = tmp_path / "model.pth", tmp_path / "model.keras"
    (_save_semseg if source == "semseg" else _save_mmseg)(reference, checkpoint)
    model = convert.main([f"{source}-pspnet", str(checkpoint), str(out)])
    assert model.get_config()["backbone"] == f"resnet{depth}" and model.get_config()["base_width"] == 8
    _compare(model, reference, _photo(*size))


def test_mmseg_769x769_models_take_align_corners_from_the_config(tmp_path, torch_seed):
    reference = randomize(MmsegPSPNet(50, classes=4, width=8, align_corners=True), seed=5)
    _save_mmseg(reference, tmp_path / "m.pth")
    model = convert.main(["mmseg-pspnet", str(tmp_path / "m.pth"), str(tmp_path / "m.keras")])
    assert model.layout == "mmseg_769x769"
    _compare(model, reference, _photo(45, 67))


def test_mmseg_without_config_is_taken_as_512x1024_and_d32_is_refused(tmp_path, torch_seed):
    reference = randomize(MmsegPSPNet(50, classes=4, width=8), seed=6)
    _save_mmseg(reference, tmp_path / "m.pth", config={})
    assert convert.main(["mmseg-pspnet", str(tmp_path / "m.pth"), str(tmp_path / "m.keras")]).layout == "mmseg"
    _save_mmseg(reference, tmp_path / "d32.pth", config=_mmseg_config(dilations="(1, 1, 1, 1)"))
    with pytest.raises(SystemExit, match=r"d32\.pth: its config is not a ResNetV1c \"-D8\" backbone"):
        convert.main(["mmseg-pspnet", str(tmp_path / "d32.pth"), str(tmp_path / "d32.keras")])


def test_semseg_without_aux_head_converts(tmp_path, torch_seed):
    reference = randomize(SemsegPSPNet(50, classes=3, width=8, aux=False), seed=3)
    _save_semseg(reference, tmp_path / "m.pth")
    model = convert.main(["semseg-pspnet", str(tmp_path / "m.pth"), str(tmp_path / "m.keras")])
    assert not isinstance(model.output, dict)
    _compare(model, reference, _photo(41, 49))


def test_a_wrong_checkpoint_is_refused_with_its_keys(tmp_path, torch_seed):
    reference = SemsegPSPNet(50, classes=3, width=8)
    state = reference.state_dict()
    del state["layer2.1.conv2.weight"]
    state["ppm.features.4.1.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "broken.pth")
    with pytest.raises(SystemExit, match=r"broken\.pth: .*missing keys \[layer2\.1\.conv2\.weight\]; "
                                         r"unexpected keys \[ppm\.features\.4\.1\.weight\]"):
        convert.main(["semseg-pspnet", str(tmp_path / "broken.pth"), str(tmp_path / "out.keras")])
    assert not (tmp_path / "out.keras").exists()

    # An mmsegmentation checkpoint given as semseg's: refused, naming the key it lacks.
    _save_mmseg(MmsegPSPNet(50, classes=3, width=8), tmp_path / "mmseg.pth")
    with pytest.raises(SystemExit, match=r"mmseg\.pth: not a semseg PSPNet checkpoint: missing keys \[cls\.4\.weight\]"):
        convert.main(["semseg-pspnet", str(tmp_path / "mmseg.pth"), str(tmp_path / "out.keras")])


@pytest.mark.slow
def test_command_line_errors_are_one_line_without_traceback(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    run = subprocess.run([sys.executable, "-m", "models.convert", "mmseg-pspnet", str(tmp_path / "junk.pth"),
                          str(tmp_path / "out.keras")], cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert "junk.pth: not a PyTorch weights checkpoint" in run.stderr.strip().splitlines()[-1]


def test_existing_output_and_missing_input_are_refused(tmp_path):
    (tmp_path / "taken.keras").write_bytes(b"mine")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=r"taken\.keras: exists already; pass --overwrite"):
        convert.main(["mmseg-pspnet", str(tmp_path / "junk.pth"), str(tmp_path / "taken.keras")])
    with pytest.raises(SystemExit, match=r"missing\.pth: no such file"):
        convert.main(["mmseg-pspnet", str(tmp_path / "missing.pth"), str(tmp_path / "out.keras")])
    assert (tmp_path / "taken.keras").read_bytes() == b"mine"


@pytest.mark.slow
def test_converted_model_exports_to_a_saved_model(tmp_path, torch_seed):
    reference = randomize(SemsegPSPNet(50, classes=5, width=8), seed=4)
    _save_semseg(reference, tmp_path / "m.pth")
    convert.main(["semseg-pspnet", str(tmp_path / "m.pth"), str(tmp_path / "m.keras")])
    infer = inference_model(keras.saving.load_model(tmp_path / "m.keras", safe_mode=True))
    infer.export(str(tmp_path / "saved_model"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    image = _photo(33, 49)
    # The SavedModel runs a Grappler-optimised graph (fused conv + BN): rounding differs slightly.
    np.testing.assert_allclose(reloaded.serve(image).numpy(), infer(image).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_converted_model_works_with_evaluate_and_predict(tmp_path, torch_seed):
    # The README's commands on a converted file: whole image, and sliding + flip + multi-scale.
    import evaluate
    import predict
    from data import samples

    reference = randomize(SemsegPSPNet(50, classes=19, width=8), seed=7)
    _save_semseg(reference, tmp_path / "m.pth")
    convert.main(["semseg-pspnet", str(tmp_path / "m.pth"), str(tmp_path / "m.keras")])
    samples.main(["cityscapes", str(tmp_path / "data"), "--num-train", "1", "--num-val", "1", "--size", "65x97"])
    # Whole image: the score of the torch reference's own argmax on the same image (65 x 97: (H - 1) % 8 == 0,
    # so semseg's output is the input's size). With test-time augmentation, which has no torch counterpart
    # here: the score counted from the predictions the command wrote.
    train_ids = official_train_ids(19)
    (image_path,) = glob.glob(str(tmp_path / "data" / "leftImg8bit" / "val" / "*" / "*_leftImg8bit.png"))
    gt = train_ids[np.asarray(Image.open(image_path.replace("leftImg8bit", "gtFine").replace(
        "_gtFine.png", "_gtFine_labelIds.png")))]
    rgb = np.asarray(Image.open(image_path).convert("RGB"), np.float32)
    x = (rgb - np.array(INPUT_MEAN, np.float32)) / np.array(INPUT_STD, np.float32)
    with torch.no_grad():
        reference_pred = reference(torch.from_numpy(x.transpose(2, 0, 1)[None])).argmax(1)[0].numpy()
    for name, flags in [("whole", []), ("tta", ["--sliding", "--crop", "33", "--flip", "--scales", "0.75,1"])]:
        metrics = evaluate.main(["--checkpoint", str(tmp_path / "m.keras"), "--data", str(tmp_path / "data"),
                                 "--split", "val", "--out", str(tmp_path / name), *flags])
        (written,) = glob.glob(str(tmp_path / name / "*_pred_labelIds.png"))
        pred = train_ids[np.asarray(Image.open(written))]
        if name == "whole":
            assert np.mean(pred == reference_pred) >= 0.995  # argmax near-ties may differ (see _compare)
            pred = reference_pred
        assert metrics["mIoU"] == pytest.approx(np.nanmean(reference_scores(gt, pred, 19)[0]), abs=1e-12), name
    Image.fromarray(np.uint8(_photo(49, 57)[0] * INPUT_STD + INPUT_MEAN)).save(tmp_path / "photo.png")
    written = predict.main(["--checkpoint", str(tmp_path / "m.keras"), str(tmp_path / "photo.png"),
                            "--out", str(tmp_path / "predict"), "--flip"])
    assert np.asarray(Image.open(written[0])).shape == (49, 57, 3)

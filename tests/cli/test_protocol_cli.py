"""--protocol semseg / mmseg through evaluate.py and predict.py on the built-in Cityscapes sample: the labelIds the
commands write are what models.pspnet.protocols gives for the same image (the protocols themselves are checked
against the sources' code in tests/models/pspnet/test_protocols.py); a flag a protocol fixes or does not use is
refused in one line naming both."""
import glob
import json
import os

import keras
import numpy as np
import pytest
from cityscapes_fixtures import official_train_ids, reference_scores
from PIL import Image

import evaluate
import predict
from data import cityscapes, samples
from models import build_pspnet
from models.pspnet.inference import load_inference_model
from models.pspnet.protocols import mmseg_predict, semseg_predict


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """(root, checkpoint, val image path): one 49 x 65 val image and a tiny PSPNet of the "mmseg" layout whose
    classifier is scaled down, so that windows, flips and scales all move the probabilities."""
    root = tmp_path_factory.mktemp("protocols")
    samples.main(["cityscapes", str(root / "data"), "--num-train", "1", "--num-val", "1", "--size", "49x65"])
    keras.utils.set_random_seed(3)
    model = build_pspnet(19, "resnet50", aux=False, base_width=4, layout="mmseg")
    layer = model.get_layer("head_classifier")
    layer.set_weights([w * 0.05 for w in layer.get_weights()])
    model.save(root / "m.keras")
    (image,) = glob.glob(str(root / "data" / "leftImg8bit" / "val" / "*" / "*_leftImg8bit.png"))
    return root, str(root / "m.keras"), image


def _rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_evaluate_with_mmseg_protocol_writes_its_labels_and_records_it(sample, tmp_path, capsys):
    root, checkpoint, image = sample
    out = tmp_path / "eval"
    metrics = evaluate.main(["--checkpoint", checkpoint, "--data", str(root / "data"), "--out", str(out),
                             "--protocol", "mmseg", "--sliding", "--crop", "40,48", "--stride", "27,32",
                             "--test-scale", "97,65", "--scales", "0.5,1", "--flip", "--quiet"])
    assert "--protocol mmseg: mode slide, test_scale 97x65, crop 40x48, stride 27x32, ratios 0.5,1.0, flip True " \
           "(the mmseg layout's Cityscapes test)" in capsys.readouterr().out
    _, labels = mmseg_predict(load_inference_model(checkpoint), _rgb(image), mode="slide", test_scale=(97, 65),
                              crop=(40, 48), stride=(27, 32), ratios=(0.5, 1.0), flip=True)
    assert len(np.unique(labels)) > 1  # the comparison can tell
    (written,) = glob.glob(str(out / "*_pred_labelIds.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(written)), cityscapes.to_label_ids(labels))
    gt = official_train_ids()[np.asarray(Image.open(image.replace("leftImg8bit", "gtFine").replace(
        "_gtFine.png", "_gtFine_labelIds.png")))]
    assert metrics["mIoU"] == pytest.approx(np.nanmean(reference_scores(gt, labels, 19)[0]), abs=1e-12)
    assert json.loads((out / "metrics.json").read_text())["protocol"] == {
        "name": "mmseg", "mode": "slide", "test_scale": [97, 65], "crop": [40, 48], "stride": [27, 32],
        "ratios": [0.5, 1.0], "flip": True}
    assert len(glob.glob(str(out / "color" / "color_*.png"))) == 1


def test_predict_with_semseg_and_mmseg_protocols_writes_their_labels(sample, tmp_path):
    _, checkpoint, image = sample
    model = load_inference_model(checkpoint)
    runs = [(["--protocol", "semseg", "--crop", "33", "--base-size", "80", "--scales", "0.75,1", "--flip"],
             semseg_predict(model, _rgb(image), crop=33, base_size=80, scales=(0.75, 1.0))[1]),
            # The "mmseg" layout's own test is the whole image; --test-scale keeps it small here.
            (["--protocol", "mmseg", "--test-scale", "97,65"],
             mmseg_predict(model, _rgb(image), mode="whole", test_scale=(97, 65))[1])]
    for number, (flags, labels) in enumerate(runs):
        assert len(np.unique(labels)) > 1
        out = tmp_path / str(number)
        predict.main(["--checkpoint", checkpoint, image, "--out", str(out), "--quiet", *flags])
        stem = os.path.splitext(os.path.basename(image))[0]
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{stem}_labelIds.png")),
                                      cityscapes.to_label_ids(labels), err_msg=flags[1])
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{stem}_color.png")),
                                      cityscapes.CLASS_COLORS[labels])


@pytest.mark.parametrize("flags, message", [
    (["--model", "mask_rcnn", "--protocol", "semseg"], "argument --protocol: not used by --model mask_rcnn"),
    (["--protocol", "semseg", "--sliding"],
     "--sliding: not used by --protocol semseg (it always tests with sliding windows); leave it out"),
    (["--protocol", "semseg", "--stride", "400"], "--stride: not used by --protocol semseg"),
    (["--protocol", "semseg", "--crop", "33,49"], "--crop 33,49: --protocol semseg tests with square windows"),
    (["--protocol", "mmseg", "--base-size", "1024"], "--base-size: not used by --protocol mmseg"),
    (["--test-scale", "2048,1024"], "--test-scale: not used by --protocol ours"),
    (["--protocol", "ours", "--base-size", "2048"], "--base-size: not used by --protocol ours"),
    (["--protocol", "mmseg", "--crop", "33"],
     "--crop: --protocol mmseg tests this model on the whole image (the mmseg layout's Cityscapes test); "
     "add --sliding"),
    (["--protocol", "semseg", "--base-size", "0"], "--base-size must be positive, got 0"),
])
def test_flags_a_protocol_does_not_take_are_refused_in_one_line(sample, tmp_path, capsys, flags, message):
    root, checkpoint, image = sample
    for command, args in ((evaluate, ["--data", str(root / "data")]), (predict, [image])):
        with pytest.raises(SystemExit) as stop:
            command.main(["--checkpoint", checkpoint, *args, "--out", str(tmp_path / "o"), *flags])
        # A parse error is printed by argparse (exit 2); a user error is SystemExit's message (exit 1).
        line = stop.value.code if isinstance(stop.value.code, str) else capsys.readouterr().err
        assert message in line and len(line.strip().splitlines()) == 1, line
        assert not (tmp_path / "o").exists()

""".keras files that would run code are refused with one line naming the file; PSPNet vs Mask R-CNN files told apart.

The refused files are written here with Keras itself (a Lambda layer, a class registered only
while saving), as a user might receive them.
"""
import os
import re
import subprocess
import zipfile

import keras
import numpy as np
import pytest

from keras.src.backend.common import global_state

from models import build_pspnet
from models import checkpoints
from models.checkpoints import CheckpointError
from models.mask_rcnn import DetectorTrainer, build_mask_rcnn, oracle_heads_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _one_line(error, path):
    text = str(error.value)
    assert "\n" not in text and str(path) in text
    return text


def _double(x):
    return x * 2


@pytest.mark.parametrize("function", [lambda x: x * 2, _double], ids=["python_lambda", "named_function"])
def test_lambda_layers_are_refused_before_keras_builds_them(tmp_path, function):
    inputs = keras.Input((3,))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, keras.layers.Lambda(function)(inputs)).save(path)
    with pytest.raises(CheckpointError, match="refused: it holds a Lambda layer") as error:
        checkpoints.load_keras_file(str(path))
    _one_line(error, path)
    # even with Keras's own safe mode switched off globally
    before = global_state.get_global_attribute("safe_mode_saving")
    keras.config.enable_unsafe_deserialization()
    try:
        with pytest.raises(CheckpointError, match="Lambda"):
            checkpoints.load_keras_file(str(path))
    finally:
        global_state.set_global_attribute("safe_mode_saving", before)


def test_a_class_this_project_does_not_define_is_refused(tmp_path):
    @keras.saving.register_keras_serializable(package="elsewhere")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2

    inputs = keras.Input((3,))
    path = tmp_path / "custom.keras"
    keras.Model(inputs, Doubler()(inputs)).save(path)
    del keras.saving.get_custom_objects()["elsewhere>Doubler"]  # a reader without that code
    with pytest.raises(CheckpointError, match="refused: it names 'Doubler', a class this project does not define"):
        checkpoints.load_keras_file(str(path))


def test_files_that_are_not_keras_archives(tmp_path):
    for name, data, message in (("empty.keras", b"", "not a .keras file"),
                                ("weights.keras", b"\x89HDF\r\n\x1a\n" + bytes(64), "not a .keras file")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=message) as error:
            checkpoints.load_keras_file(str(tmp_path / name), flag="--weights")
        assert _one_line(error, tmp_path / name).startswith("--weights ")
    with zipfile.ZipFile(tmp_path / "noconfig.keras", "w") as archive:
        archive.writestr("model.weights.h5", b"")
    with pytest.raises(CheckpointError, match="damaged .keras file"):
        checkpoints.load_keras_file(str(tmp_path / "noconfig.keras"))
    with pytest.raises(CheckpointError, match="no such file"):
        checkpoints.load_keras_file(str(tmp_path / "missing.keras"))


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kinds")
    pspnet = folder / "pspnet.keras"
    build_pspnet(19, backbone="resnet18", base_width=8).save(pspnet)
    detector = build_mask_rcnn(5, base_width=8, fpn_channels=8, mask_head_channels=8, box_head_units=16)
    trainer = folder / "trainer.keras"
    DetectorTrainer(detector, stage="mask_head", mask_rois="gt").save(trainer)
    return str(pspnet), str(trainer)


def test_kinds_are_told_apart_and_a_mismatch_is_one_line(saved_models):
    pspnet_path, trainer_path = saved_models
    pspnet = checkpoints.load_keras_file(pspnet_path)
    trainer = checkpoints.load_keras_file(trainer_path)
    assert checkpoints.model_kind(pspnet) == "pspnet"
    assert checkpoints.model_kind(trainer) == "mask_rcnn"
    assert checkpoints.model_kind(trainer.detector) == "mask_rcnn"
    assert checkpoints.model_kind(oracle_heads_model(trainer.detector)) == "mask_rcnn"
    # the loaded PSPNet is the saved one: same weights
    np.testing.assert_array_equal(pspnet.get_layer("head_classifier").get_weights()[0],
                                  keras.saving.load_model(pspnet_path, safe_mode=True)
                                  .get_layer("head_classifier").get_weights()[0])
    assert checkpoints.check_kind(pspnet, "pspnet", pspnet_path) is pspnet
    with pytest.raises(CheckpointError, match="a Mask R-CNN checkpoint, not a PSPNet one; pass --model mask_rcnn"):
        checkpoints.check_kind(trainer, "pspnet", trainer_path, hint={"mask_rcnn": "pass --model mask_rcnn"})
    with pytest.raises(CheckpointError, match="a PSPNet checkpoint, not a Mask R-CNN one"):
        checkpoints.check_kind(pspnet, "mask_rcnn", pspnet_path)
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)], name="other")
    with pytest.raises(CheckpointError, match="not a PSPNet checkpoint of this project"):
        checkpoints.check_kind(plain, "pspnet", "x.keras")


# train.py's resume loads move to models/*/recipe.py in this sprint (another branch); the lead
# removes this entry when merging it (its loads then go through load_keras_file or pass safe_mode=True).
PENDING_ELSEWHERE = set()


def test_every_load_model_call_in_the_repo_asks_for_safe_mode():
    """Keras's default is safe mode today; saying so at every call keeps it when defaults or globals change."""
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    unsafe = []
    for name in files:
        with open(os.path.join(REPO, name)) as f:
            source = f.read()
        for match in re.finditer(r"\.load_model\(", source):  # keras.saving.load_model, keras.models.load_model
            call = source[match.end():source.find("\n\n", match.end())]
            depth, end = 1, 0
            while depth and end < len(call):  # the call's own argument list, nested parentheses included
                depth += {"(": 1, ")": -1}.get(call[end], 0)
                end += 1
            if "safe_mode=True" not in call[:end] and name not in PENDING_ELSEWHERE:
                unsafe.append(f"{name}: load_model({call[:end]}")
    assert not unsafe, unsafe

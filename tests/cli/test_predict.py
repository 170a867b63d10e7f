"""predict.py on the user's own images: any size, common formats, clear errors, no silent overwrite."""
import os

import numpy as np
import pytest
from PIL import Image

import predict
from data import cityscapes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from models import build_pspnet

    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.keras")
    build_pspnet(19, backbone="resnet18", base_width=8).save(path)
    return path


def test_odd_sized_jpeg_and_png_folder(checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(tmp_path / "odd.jpg")
    folder = tmp_path / "more"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8)).save(folder / "grey.png")  # one channel
    out = str(tmp_path / "out")
    predict.main(["--checkpoint", checkpoint, str(tmp_path / "odd.jpg"), str(folder), "--out", out,
                  "--sliding", "--crop", "32", "--flip"])
    for stem, size in (("odd", (37, 53)), ("grey", (40, 30))):
        color = np.array(Image.open(os.path.join(out, f"{stem}_color.png")))
        overlay = np.array(Image.open(os.path.join(out, f"{stem}_overlay.png")))
        label_ids = np.array(Image.open(os.path.join(out, f"{stem}_labelIds.png")))
        assert color.shape == overlay.shape == size + (3,) and label_ids.shape == size
        # colours are the palette entries of the predicted classes, labelIds their official ids
        train_ids = cityscapes.to_train_ids(label_ids)
        assert (train_ids < 19).all()
        np.testing.assert_array_equal(color, cityscapes.CLASS_COLORS[train_ids])
    with pytest.raises(SystemExit, match="--overwrite"):
        predict.main(["--checkpoint", checkpoint, str(tmp_path / "odd.jpg"), "--out", out])


def test_errors_name_the_file(checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="missing.png: no such file"):
        predict.main(["--checkpoint", checkpoint, str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="broken.png: not an image file"):
        predict.main(["--checkpoint", checkpoint, str(tmp_path / "broken.png"), "--out", str(tmp_path / "o")])

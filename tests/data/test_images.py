"""data.images on real files written here: bad files get one line naming them, the unambiguous conversions happen.

References: the pixels written (NumPy), Pillow's own ImageOps.exif_transpose for orientation,
and NumPy float64 for the 16-bit scaling.
"""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from data import images
from data.errors import UsageError
from data.images import BadImageError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)


def _png_bytes(array, **save_options):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save_options)
    return buffer.getvalue()


def _write(path, data):
    path.write_bytes(data)
    return str(path)


def _single_line(error):
    text = str(error.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("name, data, message", [
    ("empty.png", b"", "empty file"),
    ("notes.png", b"just some text, not pixels\n" * 5, "not an image file"),
    ("cut.png", _png_bytes(RGB)[:-20], "truncated PNG"),
    ("cut_header.png", _png_bytes(RGB)[:20], "damaged PNG"),
])
def test_bad_files_are_refused_by_the_header_check_naming_the_file(tmp_path, name, data, message):
    path = _write(tmp_path / name, data)
    for check in (images.inspect_image, images.read_image):
        with pytest.raises(BadImageError, match=message) as error:
            check(path)
        assert _single_line(error).startswith(path + ": ")


def test_truncated_jpeg_and_missing_file(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(RGB).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    assert images.inspect_image(_write(tmp_path / "whole.jpg", jpeg)).format == "JPEG"
    path = _write(tmp_path / "cut.jpg", jpeg[: len(jpeg) * 2 // 3])
    with pytest.raises(BadImageError, match="truncated JPEG") as error:
        images.read_image(path)
    assert _single_line(error).startswith(path)
    with pytest.raises(BadImageError, match="missing.png: no such file"):
        images.read_image(str(tmp_path / "missing.png"))


def test_data_appended_after_the_end_is_not_truncation(tmp_path):
    # phones' "motion photos" append a video after the JPEG's end marker
    buffer = io.BytesIO()
    Image.fromarray(RGB).save(buffer, format="JPEG", quality=95)
    photo = _write(tmp_path / "motion.jpg", buffer.getvalue() + bytes(range(256)) * 40)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(images.read_image(photo), expected)
    padded = _write(tmp_path / "padded.png", _png_bytes(RGB) + b"\0" * 2000)
    np.testing.assert_array_equal(images.read_image(padded), RGB)


def test_truncated_jpeg_with_a_thumbnail_is_caught_by_the_decode(tmp_path):
    # an EXIF thumbnail is a small JPEG with its own end marker early in the file: the cheap check
    # is fooled, the full decode is not
    thumbnail = io.BytesIO()
    Image.fromarray(RGB[:4, :4]).save(thumbnail, format="JPEG")
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = 1
    buffer = io.BytesIO()
    big = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(big).save(buffer, format="JPEG", exif=exif.tobytes() + thumbnail.getvalue())
    data = buffer.getvalue()
    path = _write(tmp_path / "cut.jpg", data[: len(data) - 800])
    assert images.JPEG_END in data[2: len(data) - 800]
    with pytest.raises(BadImageError, match="damaged JPEG data") as error:
        images.read_image(path)
    assert _single_line(error).startswith(path)


def test_damage_inside_a_complete_png_is_found_by_decoding(tmp_path):
    data = bytearray(_png_bytes(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    start = data.index(b"IDAT") + 40
    data[start:start + 64] = bytes(64)  # zeros in the middle of the zlib stream; the end marker stays
    bad = _write(tmp_path / "bad.png", bytes(data))
    good = _write(tmp_path / "good.png", _png_bytes(RGB))
    assert images.inspect_image(bad).height == 64  # the cheap check cannot see it...
    with pytest.raises(BadImageError, match="damaged PNG data") as error:
        images.read_image(bad)  # ...the decode does
    assert _single_line(error).startswith(bad)
    # TensorFlow's decoder fails without naming the file; find_undecodable names it
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_png(tf.io.read_file(bad))
    assert str(images.find_undecodable([good, bad])).startswith(bad)
    assert images.find_undecodable([good]) is None


def test_greyscale_palette_and_rgba_become_rgb_with_alpha_dropped(tmp_path):
    grey = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    rgba = RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    np.testing.assert_array_equal(images.read_image(_write(tmp_path / "g.png", _png_bytes(grey))),
                                  np.repeat(grey[..., None], 3, -1))
    np.testing.assert_array_equal(images.read_image(_write(tmp_path / "a.png", _png_bytes(rgba))), rgba[..., :3])
    palette = Image.fromarray(RGB).convert("P", palette=Image.ADAPTIVE, colors=8)
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(images.read_image(str(tmp_path / "p.png")), np.asarray(palette.convert("RGB")))
    info = images.inspect_image(str(tmp_path / "a.png"))
    assert (info.format, info.height, info.width, info.channels, info.bit_depth) == ("PNG", 5, 7, 4, 8)


def test_16_bit_png_grey_and_rgb_keep_the_high_byte_as_tensorflow_does(tmp_path):
    grey16 = RNG.integers(0, 65536, (4, 6), dtype=np.uint16)
    rgb16 = RNG.integers(0, 65536, (4, 6, 3), dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")  # Pillow writes a 16-bit greyscale PNG
    _write(tmp_path / "c16.png", tf.io.encode_png(rgb16).numpy())  # Pillow cannot write 48-bit RGB
    assert images.inspect_image(str(tmp_path / "g16.png")).bit_depth == 16
    expected_grey = (grey16 // 256).astype(np.uint8)
    np.testing.assert_array_equal(images.read_image(str(tmp_path / "g16.png")),
                                  np.repeat(expected_grey[..., None], 3, -1))
    np.testing.assert_array_equal(images.read_image(str(tmp_path / "c16.png")), (rgb16 // 256).astype(np.uint8))
    # the tf.data readers decode with tf.io.decode_png: the same pixels
    for name in ("g16.png", "c16.png"):
        np.testing.assert_array_equal(tf.io.decode_png(tf.io.read_file(str(tmp_path / name)), channels=3).numpy(),
                                      images.read_image(str(tmp_path / name)))


def test_float_pixels_have_no_single_reading(tmp_path):
    Image.fromarray(RNG.random((4, 5)).astype(np.float32)).save(tmp_path / "depth.tif")
    with pytest.raises(BadImageError, match="floating-point pixels") as error:
        images.read_image(str(tmp_path / "depth.tif"))
    assert _single_line(error).startswith(str(tmp_path / "depth.tif"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_does(tmp_path, orientation):
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = orientation
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(RGB).save(path, exif=exif)  # lossless, so the comparison is exact
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    np.testing.assert_array_equal(images.read_image(str(path)), expected)


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    # A photo taken with the camera turned: stored 6 high x 10 wide, orientation 6 (rotate 90 clockwise).
    stored = np.zeros((6, 10, 3), np.uint8)
    stored[:, :5] = (255, 0, 0)  # left half red, right half blue
    stored[:, 5:] = (0, 0, 255)
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = 6
    Image.fromarray(stored).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    upright = images.read_image(str(tmp_path / "turned.jpg"))
    assert upright.shape == (10, 6, 3)
    # rotated clockwise, the stored left half (red) is on top
    assert upright[1, 3, 0] > 200 and upright[1, 3, 2] < 60
    assert upright[8, 3, 2] > 200 and upright[8, 3, 0] < 60


def test_label_maps_must_be_8_bit_single_channel_png(tmp_path):
    ok = _write(tmp_path / "ok.png", _png_bytes(RNG.integers(0, 34, (4, 6), dtype=np.uint8)))
    assert images.check_label_png(ok).channels == 1
    Image.fromarray(RNG.integers(0, 34, (4, 6), dtype=np.uint16)).save(tmp_path / "l16.png")
    _write(tmp_path / "colour.png", _png_bytes(RGB))
    for name in ("l16.png", "colour.png"):
        with pytest.raises(BadImageError, match="must be an 8-bit single-channel PNG") as error:
            images.check_label_png(str(tmp_path / name))
        assert _single_line(error).startswith(str(tmp_path / name))


def test_find_images_lists_files_given_and_images_in_folders_sorted(tmp_path):
    for name in ("b/2.JPG", "b/1.png", "a/x.webp", "a/notes.txt", "a/deeper/y.tif", "single.dat"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")  # only names count here: find_images lists, it does not read
    found = images.find_images([str(tmp_path / "single.dat"), str(tmp_path / "b"), str(tmp_path / "a")])
    assert [str(p.relative_to(tmp_path)) for p in map(type(tmp_path), found)] == [
        "single.dat", "b/1.png", "b/2.JPG", "a/x.webp", "a/deeper/y.tif"]  # a file given is taken whatever its name
    with pytest.raises(UsageError, match="missing.png: no such file or folder"):
        images.find_images([str(tmp_path / "b"), str(tmp_path / "missing.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"no images \(.png, .jpg, .*\) in .*empty"):
        images.find_images([str(tmp_path / "empty")])

"""Reading image files safely: one-line errors that name the file, and the conversions that are unambiguous.

Every reader of user images goes through here (the Cityscapes pipeline, predict.py,
evaluate.py), so a bad file gets the same message everywhere.

Two entry points, for two costs:

    inspect_image(path)  header + last bytes only (no pixel decoding, well under a
                         millisecond): zero-byte files, files that are not images,
                         truncated PNG/JPEG (no end marker), size, channels, bit depth.
                         Run once per file when a dataset is listed, so that the fast
                         TensorFlow decoders in tf.data only ever see checked files.
    read_image(path)     a full decode with Pillow -> uint8 [H, W, 3] RGB, converting:
                           greyscale (1, L, P, 16-bit) -> RGB (the grey value in all three channels)
                           alpha (RGBA, LA, PA) -> dropped: the colour channels are used as
                             stored, not composited on a background (TensorFlow's
                             decode_png(channels=3) does the same, so both paths agree)
                           16-bit -> 8-bit as v >> 8, the high byte: what both TensorFlow's
                             decode_png and Pillow do, so the tf.data and Pillow paths agree
                             to the bit
                           EXIF orientation (JPEG, PNG, TIFF, WebP) applied, as a viewer shows it
                         and refusing what has no single 8-bit reading: 32-bit integer or
                         floating-point pixels (Pillow modes I, F). An animated file gives
                         its first frame.

find_images(inputs) lists the image files a user names (files, and the images inside folders).

Errors are `BadImageError` (a ValueError): str(error) is one line, "PATH: what is wrong;
what to do". `find_undecodable(paths)` maps a decode failure that TensorFlow reports
without a file name back to the file.
"""
import collections
import os

import numpy as np

from data.errors import UsageError, UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC: the last 8 bytes of every complete PNG
JPEG_START = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
# Bytes searched for the JPEG end marker: some cameras pad after it. In entropy-coded
# data 0xFF is always followed by 0x00 or a restart marker, so FFD9 cannot occur early
# inside the scan of a truncated file.
_JPEG_TAIL = 1024
EXIF_ORIENTATION = 0x0112

# What find_images takes from a folder: the formats Pillow reads that photos come in.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

# PNG colour types (IHDR byte 25) -> channels before any conversion.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}

ImageInfo = collections.namedtuple("ImageInfo", ["path", "format", "height", "width", "channels", "bit_depth"])
ImageInfo.__doc__ = """What a file's header says: format "PNG", "JPEG", ... (Pillow's name), height and width in
pixels as stored (before any EXIF rotation), channels as stored (1 grey, 2 grey+alpha, 3, 4 with alpha),
bit_depth per channel (8 or 16; 8 for formats other than PNG)."""


class BadImageError(UserError, ValueError):
    """A user's image file that cannot be used; str() is one line naming the file."""


def _open(path):
    """A binary file object for a local path or any tf.io.gfile path (gs://, ...)."""
    if "://" in str(path):
        import tensorflow as tf

        if not tf.io.gfile.exists(path):  # GFile would raise tf.errors.NotFoundError, not an OSError
            raise FileNotFoundError(path)
        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb")


def _size(f):
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(0)
    return size


def inspect_image(path):
    """Checks a file's header and end without decoding pixels -> ImageInfo.

    Raises BadImageError (one line naming `path`) for a missing or zero-byte file, a file
    that is not an image Pillow knows, and a PNG or JPEG whose end marker is missing
    (truncated: a copy or download that stopped early). Damage inside the compressed data
    of a complete-looking file is found only by decoding (read_image, find_undecodable).
    """
    try:
        with _open(path) as f:
            size = _size(f)
            if size == 0:
                raise BadImageError(f"{path}: empty file (0 bytes); copy or download it again")
            head = f.read(33)
            f.seek(max(size - _JPEG_TAIL, 0))
            tail = f.read()
            f.seek(0)
            if head.startswith(PNG_SIGNATURE):
                return _inspect_png(path, head, tail.endswith(PNG_END) or _ends_early(f, PNG_END))
            if head.startswith(JPEG_START) and JPEG_END not in tail and not _ends_early(f, JPEG_END):
                raise BadImageError(f"{path}: truncated JPEG (no end marker); copy or download it again")
            return _inspect_with_pillow(path, f)
    except FileNotFoundError:
        raise BadImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadImageError(f"{path}: a folder, not an image file") from None


def _ends_early(f, marker):
    """Whether the end marker occurs anywhere after the header: files with data appended after
    their end (phones' "motion photos" append a video to the JPEG) are complete. Reads the
    whole file, but only for files whose last bytes lack the marker."""
    f.seek(2)
    found = marker in f.read()
    f.seek(0)
    return found


def _inspect_png(path, head, complete):
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise BadImageError(f"{path}: damaged PNG (no IHDR header); copy or download it again")
    if not complete:
        raise BadImageError(f"{path}: truncated PNG (no IEND chunk at the end); copy or download it again")
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    bit_depth, colour_type = head[24], head[25]
    if colour_type not in _PNG_CHANNELS:
        raise BadImageError(f"{path}: damaged PNG (colour type {colour_type} does not exist)")
    return ImageInfo(str(path), "PNG", height, width, _PNG_CHANNELS[colour_type], bit_depth)


def _inspect_with_pillow(path, f):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(f) as image:  # reads the header only
            width, height = image.size
            channels = len(image.getbands())
            return ImageInfo(str(path), image.format, height, width, channels, 8)
    except UnidentifiedImageError:
        raise BadImageError(f"{path}: not an image file (Pillow reads PNG, JPEG, BMP, TIFF, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(f"{path}: damaged image header ({_first_line(error)})") from None


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_image(path):
    """Decodes an image file -> uint8 [H, W, 3] RGB, with the conversions in the module doc.

    Raises BadImageError (one line naming `path`) for anything inspect_image refuses, data
    that does not decode (damaged inside), and pixel formats with no single 8-bit reading.
    """
    from PIL import Image

    info = inspect_image(path)
    try:
        with _open(path) as f, Image.open(f) as image:
            image.load()  # the full decode: damaged compressed data fails here
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            rgb = _to_rgb8(path, image)
    except BadImageError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(f"{path}: damaged {info.format} data ({_first_line(error)}); "
                            "copy or download it again") from None
    return apply_orientation(rgb, orientation)


def _to_rgb8(path, image):
    """A decoded Pillow image -> uint8 [H, W, 3] (16-bit colour arrives as 8-bit already: Pillow keeps
    the high byte; 16-bit greyscale arrives as mode I;16 and is reduced the same way here)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        grey = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode in ("I", "F"):
        raise BadImageError(f"{path}: {'32-bit integer' if image.mode == 'I' else 'floating-point'} pixels have "
                            "no single 8-bit reading; save it as an 8- or 16-bit RGB or greyscale image")
    # 1, L, P, LA, PA, RGBA, CMYK, YCbCr, ...: Pillow's conversion; alpha is dropped, not composited.
    return np.asarray(image.convert("RGB"))


def apply_orientation(array, orientation):
    """Turns stored pixels [H, W, ...] into the upright image that EXIF `orientation` (1..8) describes.

    The eight values are the four rotations of the stored image, with and without a mirror:
    1 as stored, 2 mirrored left-right, 3 rotated 180, 4 mirrored top-bottom, 5 transposed,
    6 rotated 90 clockwise, 7 transversed, 8 rotated 90 counter-clockwise. Unknown values
    (0, >8: broken EXIF) leave the pixels as stored, as viewers do.
    """
    transforms = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.swapaxes(a, 0, 1)[:, ::-1],
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
        8: lambda a: np.swapaxes(a, 0, 1)[::-1],
    }
    transform = transforms.get(int(orientation))
    return np.ascontiguousarray(transform(array)) if transform else array


def check_label_png(path):
    """Checks a label map's header -> ImageInfo; labels are ids, so nothing is converted.

    A label must be an 8-bit single-channel PNG (greyscale, as the official tools write
    them): scaling a 16-bit one or taking the luminance of a colour one would change
    its ids. Raises BadImageError naming the file otherwise.
    """
    info = inspect_image(path)
    if info.format != "PNG" or info.channels != 1 or info.bit_depth != 8:
        kind = f"{info.bit_depth}-bit {info.channels}-channel {info.format}"
        raise BadImageError(f"{path}: a label map must be an 8-bit single-channel PNG of ids, this is a {kind}; "
                            "write the labelIds with cityscapesscripts' json2labelImg")
    return info


def find_undecodable(paths, *, reader=read_image):
    """The first file in `paths` that does not decode, as a BadImageError, or None.

    TensorFlow's decoders fail inside tf.data with a message that names no file; call
    this after such a failure (it decodes every file with Pillow, so it is slow, but it
    runs only on the error path) to say which file it was.
    """
    for path in paths:
        try:
            reader(path)
        except BadImageError as error:
            return error
    return None


def find_images(inputs):
    """The files given, plus the IMAGE_EXTENSIONS files inside the folders given (walked, sorted).

    A path that does not exist, or no image at all, raises data.errors.UsageError, one line naming it.
    """
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            for folder, _, files in sorted(os.walk(item)):
                paths += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UsageError(f"{item}: no such file or folder")
    if not paths:
        raise UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {' '.join(inputs)}")
    return paths


def write_png(path, array):
    """Writes uint8 [H, W] (single channel) or [H, W, 3] (RGB) as a PNG."""
    from PIL import Image

    Image.fromarray(np.asarray(array, np.uint8)).save(path)

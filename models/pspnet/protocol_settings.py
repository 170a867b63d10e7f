"""evaluate.py's and predict.py's --protocol flags (PSPNet), checked and resolved into one TestProtocol.

    protocol = resolve_protocol(args, cli.given_flags(parser, argv), args.checkpoint)
    train_ids = protocol.predict(model, rgb)    # uint8 [H, W, 3] RGB -> [H, W] int32 trainIds

--protocol ours (default): this project's inference.predict_logits, as without the flag: --sliding,
  --crop (default 713), --stride (default ceil(2/3 of --crop)), --flip, --scales.
--protocol semseg: protocols.semseg_predict (hszhao/semseg tool/test.py): --crop (a square window,
  default 713), --base-size (default 2048), --scales; its flip is always on (--flip is implied).
--protocol mmseg: protocols.mmseg_predict (mmsegmentation 0.x) with the model's own test settings:
  those its converted file records (provenance "test_settings", read from the checkpoint's config by
  models.convert), else those of its layout (protocols.MMSEG_CITYSCAPES; any other layout takes the
  512x1024 models' whole-image test at 2048x1024); --sliding (mode "slide"), --crop, --stride,
  --test-scale LONG,SHORT override them, --scales are its img_ratios, --flip its flip.
A flag the chosen protocol fixes or does not use is refused: UsageError, one line naming both.
"""
import dataclasses
import json
import zipfile

from data import cli
from data.errors import UsageError

PROTOCOLS = ("ours", "semseg", "mmseg")
# The inference flags each protocol reads; another of INFERENCE_FLAGS given with it is refused (_UNUSED says why).
INFERENCE_FLAGS = ("--sliding", "--crop", "--stride", "--flip", "--scales", "--base-size", "--test-scale")
_READS = {
    "ours": ("--sliding", "--crop", "--stride", "--flip", "--scales"),
    "semseg": ("--crop", "--base-size", "--flip", "--scales"),
    "mmseg": ("--sliding", "--crop", "--stride", "--test-scale", "--flip", "--scales"),
}
_UNUSED = {
    ("ours", "--base-size"): "it runs each image at its own size, times --scales",
    ("ours", "--test-scale"): "it runs each image at its own size, times --scales",
    ("semseg", "--sliding"): "it always tests with sliding windows",
    ("semseg", "--stride"): "its stride is fixed: ceil(2/3 of --crop)",
    ("semseg", "--test-scale"): "it resizes the long side to --base-size",
    ("mmseg", "--base-size"): "it rescales each image to --test-scale",
}


@dataclasses.dataclass(frozen=True)
class TestProtocol:
    """A resolved test protocol: its name, the keyword arguments of its function, where they came from.

    settings: ours: predict_image's (mode, crop_size, stride, flip, scales); semseg: semseg_predict's
    (crop, base_size, scales); mmseg: mmseg_predict's (mode, test_scale, crop, stride, ratios, flip).
    """

    __test__ = False  # not a pytest test class, whatever its name

    name: str
    settings: dict
    origin: str = ""

    def predict(self, model, rgb):
        """uint8 [H, W, 3] RGB -> trainIds [H, W] int32 (model: load_inference_model's)."""
        from models.pspnet.prediction import predict_image
        from models.pspnet.protocols import mmseg_predict, semseg_predict

        if self.name == "semseg":
            return semseg_predict(model, rgb, **self.settings)[1]
        if self.name == "mmseg":
            return mmseg_predict(model, rgb, **self.settings)[1]
        return predict_image(model, rgb, **self.settings)

    def as_dict(self):
        """{"name": ..., setting: value, ...} as metrics.json records it (tuples as lists)."""
        return json.loads(json.dumps({"name": self.name, **self.settings}))

    def describe(self):
        """One line: "--protocol mmseg: mode slide, test_scale 2049x1025, ... (origin)"."""
        shown = ", ".join(f"{key} {_show(value)}" for key, value in self.settings.items())
        return f"--protocol {self.name}: {shown}" + (f" ({self.origin})" if self.origin else "")


def _show(value):
    if isinstance(value, (tuple, list)):
        return ("x" if len(value) == 2 and all(isinstance(v, int) for v in value) else ",").join(map(str, value))
    return str(value)


def resolve_protocol(args, given, checkpoint):
    """The TestProtocol the parsed flags ask for; parses args.scales. Raises UsageError naming the flag.

    args: the parsed flags (protocol, sliding, crop, stride, flip, scales, base_size, test_scale);
    given: the flags written on the command line (data.cli.given_flags); checkpoint: the .keras
    file, read (its provenance and layout, not its weights) for --protocol mmseg.
    """
    for flag, pair in (("--crop", args.crop), ("--stride", args.stride), ("--test-scale", args.test_scale)):
        for side in pair or ():
            cli.check_positive(flag, side)
    if args.base_size is not None:
        cli.check_positive("--base-size", args.base_size)
    args.scales = cli.parse_scales("--scales", args.scales)
    name = args.protocol
    for flag in given:
        if flag in INFERENCE_FLAGS and flag not in _READS[name]:
            raise UsageError(f"{flag}: not used by --protocol {name} ({_UNUSED[name, flag]}); leave it out")
    if name == "ours":
        return TestProtocol("ours", dict(mode="sliding" if args.sliding else "whole", crop_size=args.crop or (713, 713),
                                         stride=args.stride, flip=args.flip, scales=args.scales))
    if name == "semseg":
        crop = args.crop or (713, 713)
        if crop[0] != crop[1]:
            raise UsageError(f"--crop {crop[0]},{crop[1]}: --protocol semseg tests with square windows (its "
                             "test_h = test_w); give one number, e.g. --crop 713")
        return TestProtocol("semseg", dict(crop=crop[0], base_size=args.base_size or 2048, scales=args.scales))
    return _mmseg_protocol(args, checkpoint)


def _mmseg_protocol(args, checkpoint):
    from models.keras_files import read_provenance
    from models.pspnet.protocols import MMSEG_CITYSCAPES

    stored = (read_provenance(checkpoint) or {}).get("test_settings") or {}
    layout = checkpoint_layout(checkpoint)
    settings = dict(MMSEG_CITYSCAPES.get(layout, MMSEG_CITYSCAPES["mmseg"]))
    origin = f"the {layout} layout's Cityscapes test" if layout in MMSEG_CITYSCAPES else \
        "mmsegmentation's Cityscapes whole-image test"
    if stored:
        origin = "the test settings the checkpoint's config states"
        if stored.get("mode") == "whole":
            settings.pop("crop", None)
            settings.pop("stride", None)
        for key, setting in (("mode", "mode"), ("crop_size", "crop"), ("stride", "stride"),
                             ("img_scale", "test_scale")):
            if key in stored:
                settings[setting] = tuple(stored[key]) if isinstance(stored[key], list) else stored[key]
    if args.sliding:
        settings["mode"] = "slide"
    for setting, value in (("crop", args.crop), ("stride", args.stride), ("test_scale", args.test_scale)):
        if value is not None:
            settings[setting] = tuple(value)
    if settings["mode"] == "whole":
        for flag, value in (("--crop", args.crop), ("--stride", args.stride)):
            if value is not None:
                raise UsageError(f"{flag}: --protocol mmseg tests this model on the whole image ({origin}); "
                                 "add --sliding to test it with windows")
        settings.pop("crop", None)
        settings.pop("stride", None)
    elif "crop" not in settings or "stride" not in settings:
        raise UsageError(f"--sliding: --protocol mmseg has no window for this model ({origin}); "
                         "pass --crop H,W and --stride H,W")
    settings.update(ratios=args.scales, flip=args.flip)
    return TestProtocol("mmseg", settings, origin)


def checkpoint_layout(checkpoint):
    """The PSPNet layout a .keras file's config.json records ("caffe", "semseg", "mmseg", ...), or None.

    Reads the JSON only (no weights, nothing built): None for a file that is not a readable .keras
    zip, which loading it then reports.
    """
    try:
        with zipfile.ZipFile(checkpoint) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    inner = config.get("config") if isinstance(config, dict) else None
    return inner.get("layout") if isinstance(inner, dict) else None

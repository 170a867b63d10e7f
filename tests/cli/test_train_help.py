"""train.py --help: every flag of both recipes says what it does (from its config field) and its default."""
import dataclasses
import re

import pytest

import train
from models.mask_rcnn import recipe as mask_recipe
from models.pspnet import recipe as pspnet_recipe


@pytest.mark.parametrize("model, recipe", [("pspnet", pspnet_recipe), ("mask_rcnn", mask_recipe)])
def test_every_flag_has_a_help_text_and_its_default(capsys, model, recipe):
    with pytest.raises(SystemExit) as done:
        train.main(["--model", model, "--help"])
    assert done.value.code == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)  # argparse wraps lines
    full = next(preset for name, preset in recipe.PRESETS.items() if name != recipe.DEMO_PRESET)
    for field in dataclasses.fields(recipe.CONFIG):
        if field.name == "preset":
            continue
        flag = "--" + field.name.replace("_", "-")
        described = field.metadata.get("help", "")
        assert len(described) > 10, f"{flag} has no help text in {recipe.CONFIG.__name__}"
        # The flag, then (after its metavar or --no- twin) the help text from the field.
        entry = re.search(re.escape(flag) + r"[ ,]" + r".{0,80}?" + re.escape(re.sub(r"\s+", " ", described)), text)
        assert entry, f"{flag}: help text missing from --help"
        value = getattr(full, field.name)
        default = (",".join(map(str, value)) if isinstance(value, tuple) else str(value).lower()
                   if isinstance(value, bool) else str(value) if value != "" else '""')
        assert f"(default: {default})" in text[entry.end():entry.end() + 200 + len(default)], flag

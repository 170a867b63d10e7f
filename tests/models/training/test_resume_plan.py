"""The pieces behind --steps and --resume: epochs cut at the run's last step, and what a resumed run may change."""
import dataclasses
import json
import re

import pytest

from data.errors import UsageError
from models.mask_rcnn.recipe import DetectorConfig
from models.pspnet.recipe import RESUMABLE as PSPNET_RESUMABLE, PSPNetConfig
from models.training.callbacks import epoch_spans
from models.training.recipe import RESUMABLE, read_saved_config, resume_changes, write_config


@pytest.mark.parametrize("start, total, per_epoch, spans", [
    (0, 1, 2, [(0, 0, 1)]),                        # below an epoch: one epoch of 1 step
    (0, 2, 2, [(0, 0, 2)]),                        # exactly one epoch
    (0, 3, 2, [(0, 0, 2), (1, 2, 3)]),             # above: the last epoch shortened
    (0, 3, 1000, [(0, 0, 3)]),                     # the issue's --steps 3 --steps-per-epoch 1000
    (1, 2, 50000, [(0, 1, 2)]),                    # the resume: step 1 -> --steps 2
    (3, 7, 2, [(1, 3, 4), (2, 4, 6), (3, 6, 7)]),  # resumed mid-epoch, then whole, then shortened
    (4, 4, 2, []), (5, 4, 2, []),                  # at or past the end: nothing
])
def test_epoch_spans(start, total, per_epoch, spans):
    assert epoch_spans(start, total, per_epoch) == spans
    if spans:  # contiguous, from start to total, none longer than an epoch
        assert spans[0][1] == start and spans[-1][2] == total
        assert all(a[2] == b[1] for a, b in zip(spans, spans[1:]))
        assert all(0 < end - first <= per_epoch for _, first, end in spans)


def test_what_a_resume_may_change_is_listed_and_the_rest_refused_in_one_line(tmp_path):
    saved = PSPNetConfig(data="/d", out=str(tmp_path), backbone="resnet18", crop=(32, 32), steps=6)
    given = dataclasses.replace(saved, steps=3, save_every=1, val_images=2, verbose=0, resume=True)
    assert resume_changes(saved, given, RESUMABLE + PSPNET_RESUMABLE) == [
        ("save_every", 0, 1), ("verbose", 1, 0), ("val_images", 0, 2), ("steps", 6, 3)]
    for name, value, message in [("backbone", "resnet50", "--backbone resnet50: the run in {} was trained with "
                                                           "--backbone resnet18"),
                                 ("crop", (64, 64), "--crop 64,64: the run in {} was trained with --crop 32,32"),
                                 ("mixed_precision", True, "--mixed-precision true: the run in {} was trained with "
                                                           "--mixed-precision false")]:
        with pytest.raises(UsageError, match="^" + re.escape(message.format(tmp_path))) as refused:
            resume_changes(saved, dataclasses.replace(given, **{name: value}), RESUMABLE + PSPNET_RESUMABLE)
        assert "\n" not in str(refused.value)
    with pytest.raises(UsageError, match="^--val-images 2: "):  # a PSPNet setting, unknown to the bare list
        resume_changes(saved, given, RESUMABLE)


def test_saved_config_reads_back_with_its_tuples_and_refuses_another_family(tmp_path):
    config = DetectorConfig(data="/coco", out=str(tmp_path), milestones=(3,), fpn_channels=16)
    write_config(config)
    assert read_saved_config(str(tmp_path), DetectorConfig) == config
    assert read_saved_config(str(tmp_path / "nothing"), DetectorConfig) is None
    with pytest.raises(UsageError, match=r"config.json: holds settings this model family does not have \(.*stage"):
        read_saved_config(str(tmp_path), PSPNetConfig)
    older = {k: v for k, v in json.load(open(tmp_path / "config.json")).items() if k != "clip_norm"}
    json.dump(older, open(tmp_path / "config.json", "w"))  # a run saved before --clip-norm existed
    assert read_saved_config(str(tmp_path), DetectorConfig).clip_norm == DetectorConfig().clip_norm

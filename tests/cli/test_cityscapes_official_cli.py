"""The official Cityscapes evaluator's command line, pointed at evaluate.py's output folder as a user would."""
import json
import os
import subprocess
import sys

import pytest
from test_evaluate import NoisyOracle, _hide_labels_in_images

from data import cityscapes
from models.pspnet.evaluation import evaluate_pspnet

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_csEvalPixelLevelSemanticLabeling_reads_our_folder_and_agrees(tmp_path):
    root, out, export = tmp_path / "cityscapes", tmp_path / "eval", tmp_path / "export"
    subprocess.run([sys.executable, "-m", "data.samples", "cityscapes", str(root), "--num-train", "1",
                    "--num-val", "3", "--size", "64x128"], cwd=REPO, check=True, capture_output=True, timeout=300)
    _hide_labels_in_images(str(root), "val")
    dataset = cityscapes.eval_pipeline(cityscapes.read_folder(str(root), "val"))
    metrics = evaluate_pspnet(NoisyOracle(), dataset, str(out))
    assert len(os.listdir(out / "color")) == 3  # colour previews kept, out of the evaluator's way

    export.mkdir()
    env = {**os.environ, "CITYSCAPES_DATASET": str(root), "CITYSCAPES_RESULTS": str(out),
           "CITYSCAPES_EXPORT_DIR": str(export)}
    # The official console script, as installed beside this Python (the same environment a user has).
    command = os.path.join(os.path.dirname(sys.executable), "csEvalPixelLevelSemanticLabeling")
    run = subprocess.run([command], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "multiple predictions" not in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]
    with open(export / "resultPixelLevelSemanticLabeling.json") as f:
        official = json.load(f)
    assert official["averageScoreClasses"] == pytest.approx(metrics["mIoU"], abs=1e-12)
    assert 0.3 < metrics["mIoU"] < 0.9  # the stand-in is neither perfect nor useless

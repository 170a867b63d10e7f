"""Loss, model and pipeline fit together: a small PSPNet memorises one sample image."""
import numpy as np
import pytest

from models.pspnet import recipe
from models.pspnet.evaluation import evaluate_pspnet
from models.pspnet.inference import load_inference_model
from models.training.recipe import parse_config
from data import cityscapes
from data.samples.cityscapes import write_cityscapes_sample


@pytest.mark.slow
def test_overfits_one_sample_image_to_miou_above_0_9(tmp_path):
    root = str(tmp_path / "sample")
    write_cityscapes_sample(root, num_train=1, num_val=1, size=(96, 192), seed=3)
    config = parse_config(recipe, [
        "--preset", "pspnet50_cityscapes_713", "--data", root, "--out", str(tmp_path / "run"),
        "--backbone", "resnet18", "--base-width", "16", "--crop", "96,192", "--scale-range", "1,1",
        "--rotation-degrees", "0", "--blur-prob", "0", "--batch-size", "2", "--epochs", "8",
        "--steps-per-epoch", "50", "--lr", "0.05", "--head-lr-multiplier", "10", "--dropout", "0", "--weight-decay", "0",
        "--verbose", "0"])
    run_dir = recipe.train_pspnet(config)
    model = load_inference_model(f"{run_dir}/last.keras")
    dataset = cityscapes.eval_pipeline(cityscapes.read_folder(root, "train"))
    metrics = evaluate_pspnet(model, dataset, str(tmp_path / "eval"), write_predictions=False)
    present = [v for v in metrics["per_class_iou"].values() if v is not None]
    assert len(present) >= 8  # the image really holds many classes
    print("overfit mIoU", metrics["mIoU"])
    assert metrics["mIoU"] > 0.9, metrics["per_class_iou"]
    assert np.isfinite(metrics["pixel_accuracy"]) and metrics["pixel_accuracy"] > 0.95

"""The oracle-box view of the detector (oracle_heads_model, predict_oracle_masks) and the mask-head stage on
ground-truth RoIs (DetectorTrainer stage="mask_head", mask_rois="gt"): what `train.py --stage mask_head
--mask-rois gt` trains and `evaluate.py --boxes gt` scores.

References: NumPy float64 losses and sigmoids written here, roi_heads_model (checked against torchvision's
RoI heads in test_detector_torchvision.py), pycocotools (through the data.coco results path), and
before/after comparisons of the same model.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from data import coco as coco_data
from data.samples.coco import write_coco_sample
from models.mask_rcnn import (
    DetectorTrainer,
    PastedMasks,
    build_mask_rcnn,
    oracle_heads_model,
    predict_oracle_masks,
    roi_heads_model,
    set_stage,
)
from models.mask_rcnn import trainer as detector_trainer
from models.mask_rcnn.targets import mask_targets
from models.mask_rcnn.transform import detector_inputs
from models.training import SegmentationSGD

SIZE = (96, 128)
TINY = dict(base_width=8, fpn_channels=16, mask_head_channels=8, box_head_units=32)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("coco"))
    write_coco_sample(path, num_train=8, num_val=4, size=SIZE, seed=5)
    return coco_data.read_coco(path, "train"), coco_data.read_coco(path, "val")


def _eval_dataset(split, batch_size=2):
    return coco_data.make_dataset(split, batch_size=batch_size, training=False, short_side=SIZE[0],
                                  long_side=SIZE[1])


def _mask_head_trainer(num_classes, **kwargs):
    """A tiny detector staged as `train.py --stage mask_head --mask-rois gt` stages it."""
    detector = build_mask_rcnn(num_classes, **TINY)
    set_stage(detector, "mask_head")
    return DetectorTrainer(detector, stage="mask_head", mask_rois="gt", box_batch_size=32, seed=0, **kwargs)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x.astype(np.float64)))


def test_oracle_view_runs_the_detectors_own_class_and_mask_branches():
    """Its class logits on given boxes are roi_heads_model's; on the detector's own detections its masks, the
    detected class's channel, are the detector's masks; its class-picked masks are the predicted class's channel."""
    keras.utils.set_random_seed(0)
    detector = build_mask_rcnn(5, **TINY)
    heads = oracle_heads_model(detector)
    assert {id(w) for w in heads.weights} <= {id(w) for w in detector.weights}  # a view: no weights of its own
    images = np.random.default_rng(0).normal(size=(2, *SIZE, 3)).astype(np.float32)
    rois = np.array([[[4, 4, 40, 60], [10, 20, 90, 120], [0, 0, 8, 8]]] * 2, np.float32)
    out = heads({"image": images, "rois": rois})
    assert out["class_logits"].shape == (2, 3, 6)
    assert out["mask_logits"].shape == (2, 3, 28, 28, 6)
    assert out["class_ids"].dtype == tf.int32 and out["class_ids"].shape == (2, 3)
    picked = np.take_along_axis(out["mask_logits"].numpy(), out["class_ids"].numpy()[..., None, None, None], -1)
    np.testing.assert_allclose(out["masks"], _sigmoid(picked[..., 0]), rtol=1e-5, atol=1e-6)

    sizes = np.array([SIZE] * 2, np.int32)
    reference = roi_heads_model(detector)({"images": images, "image_sizes": sizes, "rois": rois,
                                            "num_rois": np.array([3, 3], np.int32)})
    np.testing.assert_allclose(out["class_logits"], reference["class_logits"], rtol=1e-5, atol=1e-5)
    counts = reference["num_detections"].numpy()
    assert counts.min() > 0
    on_detections = heads({"image": images, "rois": reference["boxes"].numpy()})["mask_logits"].numpy()
    class_ids = reference["class_ids"].numpy()
    for b, n in enumerate(counts):
        channel = np.take_along_axis(on_detections[b, :n], class_ids[b, :n, None, None, None], -1)[..., 0]
        np.testing.assert_allclose(reference["masks"][b, :n], _sigmoid(channel), rtol=1e-5, atol=1e-6)


def test_oracle_view_of_a_saved_mask_head_trainer_is_the_one_it_was_saved_with(tmp_path):
    """evaluate.py --boxes gt reads a run's checkpoint (a DetectorTrainer) or a detector file: both give back the
    oracle outputs of the detector they were saved from, and the trainer its settings."""
    keras.utils.set_random_seed(1)
    trainer = _mask_head_trainer(5, box_positive_fraction=0.5)
    inputs = {"image": np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32),
              "rois": np.array([[[4, 4, 40, 60], [10, 20, 60, 64]]], np.float32)}
    expected = oracle_heads_model(trainer.detector)(inputs)
    for obj, name in ((trainer.detector, "detector.keras"), (trainer, "trainer.keras")):
        obj.save(tmp_path / name)
        loaded = keras.saving.load_model(tmp_path / name, safe_mode=True)
        out = oracle_heads_model(getattr(loaded, "detector", loaded))(inputs)
        for key in expected:
            np.testing.assert_allclose(out[key], expected[key], atol=1e-6)
    assert (loaded.stage, loaded.mask_rois, loaded.box_positive_fraction) == ("mask_head", "gt", 0.5)


def _numpy_class_and_mask_losses(class_logits, mask_logits, class_ids, masks, valid):
    """float64: the mask loss (BCE from logits, ground-truth class channel, positives) and the class loss
    (softmax cross-entropy, mean over the valid RoIs)."""
    logits = class_logits.astype(np.float64)
    log_softmax = logits - logits.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_softmax, class_ids[..., None], -1)[..., 0]
    class_loss = (ce * valid).sum() / valid.sum()
    positive = class_ids > 0
    x = np.take_along_axis(mask_logits.astype(np.float64), class_ids[:, :, None, None, None], -1)[..., 0][positive]
    y = masks[positive]
    bce = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    return bce.mean(), class_loss


def test_mask_head_steps_on_ground_truth_rois_log_the_oracle_views_losses(sample, monkeypatch):
    """train_on_batch and test_on_batch take one dataset batch; with the same sampling, what they log (the
    pre-step forward) are the losses NumPy computes from the oracle view's logits on the sampled RoIs, and the
    stage's objective is the mask loss."""
    keras.utils.set_random_seed(0)
    trainer = _mask_head_trainer(sample[0].categories.num_classes)
    trainer.compile(optimizer=SegmentationSGD(1e-3, momentum=0.0, l2=0.0))
    batch = next(iter(_eval_dataset(sample[0])))
    start = trainer.seed_generator.state.numpy()
    recorded = {}

    def recording(*args, **kwargs):  # box_head_targets, its sample kept for the reference
        sampled = box_head_targets(*args, **kwargs)
        recorded.update(sampled)
        return sampled

    box_head_targets = detector_trainer.box_head_targets
    with monkeypatch.context() as patch:
        patch.setattr(detector_trainer, "box_head_targets", recording)
        trainer.losses_of(batch, training=False)
    valid = recorded["valid"].numpy()
    class_ids = recorded["class_ids"].numpy()
    # The sample holds what each loss must weigh right: padding rows, background RoIs, several positives.
    assert not valid.all() and (valid & (class_ids == 0)).any() and (class_ids > 0).sum() > 2
    out = oracle_heads_model(trainer.detector)({"image": detector_inputs(batch)["images"], "rois": recorded["rois"]})
    masks = mask_targets(batch["masks"], batch["boxes"], recorded["rois"], recorded["gt_index"], 28).numpy()
    mask_ref, class_ref = _numpy_class_and_mask_losses(out["class_logits"].numpy(), out["mask_logits"].numpy(),
                                                       class_ids, masks, valid)

    for step in (trainer.test_on_batch, trainer.train_on_batch):
        trainer.seed_generator.state.assign(start)  # the same RoIs as recorded
        logs = step(batch, return_dict=True)
        assert set(logs) == set(detector_trainer.METRIC_NAMES)
        np.testing.assert_allclose(logs["mask_loss"], mask_ref, rtol=1e-4, err_msg=step.__name__)
        np.testing.assert_allclose(logs["box_class_loss"], class_ref, rtol=1e-4, err_msg=step.__name__)
        assert logs["loss"] == logs["mask_loss"]


def _oracle_ap(heads, val):
    """segm COCOeval of predict_oracle_masks with the true classes (pycocotools, through data.coco)."""
    predictions = predict_oracle_masks(heads, _eval_dataset(val), class_source="ground_truth")
    return coco_data.evaluate_segm(val.coco, coco_data.segm_results(predictions, val.categories))


@pytest.mark.slow
def test_short_mask_head_training_lowers_its_loss_and_oracle_prediction_runs_end_to_end(sample):
    train, val = sample
    train_ds = coco_data.make_dataset(train, batch_size=2, training=True, seed=0, short_side=SIZE[0],
                                      long_side=SIZE[1])
    # The losses on the training images (no flip), the same RoIs each time: a 40-step run on 8 images fits them;
    # on 4 held-out images the change is too noisy to assert.
    fitted_ds = _eval_dataset(train)
    keras.utils.set_random_seed(0)
    trainer = _mask_head_trainer(train.categories.num_classes)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    heads = oracle_heads_model(trainer.detector)  # a view: it follows the training
    start = trainer.seed_generator.state.numpy()

    def evaluate():
        trainer.seed_generator.state.assign(start)
        return trainer.evaluate(fitted_ds, verbose=0, return_dict=True)

    before, untrained = evaluate(), _oracle_ap(heads, val)
    trainer.fit(train_ds, steps_per_epoch=40, epochs=1, verbose=0, shuffle=False)
    after, trained = evaluate(), _oracle_ap(heads, val)
    assert after["mask_loss"] < 0.9 * before["mask_loss"], (before, after)  # measured 0.76 -> 0.60
    # Only the mask branch trains: the class branch's loss on the same RoIs is what it was.
    np.testing.assert_allclose(after["box_class_loss"], before["box_class_loss"], rtol=1e-5)
    # The held-out images' masks on their true boxes and classes, measured: segm AP 0.09 -> 0.44, AP50 0.4 -> 1.0.
    # Masks pasted in the wrong place or at the wrong scale, or results with wrong ids, score near 0.
    assert trained["segm_AP"] > untrained["segm_AP"] + 0.15 and trained["segm_AP50"] > 0.7, (untrained, trained)

    # The class probabilities of each ground-truth box: float64 softmax of the view's logits.
    probabilities = []
    for batch in _eval_dataset(val):
        logits = heads({"image": detector_inputs(batch)["images"], "rois": batch["boxes"]})["class_logits"]
        logits = logits.numpy().astype(np.float64)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities += [row[:n] for row, n in zip(e / e.sum(-1, keepdims=True), batch["num_instances"].numpy())]
    for source in ("predicted", "ground_truth"):
        predictions = predict_oracle_masks(heads, _eval_dataset(val), class_source=source)
        assert [p["image_id"] for p in predictions] == [r["image_id"] for r in val.records]
        for p, record, probs in zip(predictions, val.records, probabilities):
            n = len(record["class_ids"])
            assert isinstance(p["masks"], PastedMasks) and len(p["masks"]) == n and p["masks"].image_size == SIZE
            np.testing.assert_allclose(p["boxes"], record["boxes"], atol=1e-4)  # back in original pixels
            # predicted: the most likely object class (background left out) and its probability
            expected = record["class_ids"] if source == "ground_truth" else 1 + probs[:, 1:].argmax(-1)
            np.testing.assert_array_equal(p["class_ids"], expected)
            np.testing.assert_allclose(p["scores"], probs[np.arange(n), expected], rtol=1e-4, atol=1e-7)
        results = coco_data.segm_results(predictions, val.categories)
        # The RLEs from the runs are those of the dense masks.
        dense = [dict(p, masks=p["masks"].dense()) for p in predictions]
        assert results == coco_data.segm_results(dense, val.categories)
        assert set(coco_data.evaluate_segm(val.coco, results)) == set(coco_data.SEGM_METRICS)


def test_oracle_prediction_maps_boxes_back_to_the_original_size(sample):
    """At a different inference scale the pasted masks still come out at the original image size."""
    val = sample[1]
    dataset = coco_data.make_dataset(val, batch_size=3, training=False, short_side=64, long_side=1000)
    predictions = predict_oracle_masks(oracle_heads_model(build_mask_rcnn(5, **TINY)), dataset)
    assert len(predictions) == len(val.records)
    for p, record in zip(predictions, val.records):
        assert p["masks"].image_size == SIZE and p["masks"].dense().shape == (len(record["class_ids"]), *SIZE)
        np.testing.assert_allclose(p["boxes"], record["boxes"], atol=1e-3)

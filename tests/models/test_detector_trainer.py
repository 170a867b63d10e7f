"""DetectorTrainer and set_stage: training steps lower every loss, each stage trains exactly its variables,
an image without objects trains, .keras round trips, --init-from copies weights.

Tiny detectors (ResNet-50 at base width 8, narrow heads) on a COCO-format
sample at 96x128, a few seconds per step on this CPU.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

import losses
from data import coco
from data.synthetic_coco import write_coco_sample
from models.mask_rcnn.detector import build_mask_rcnn
from models.mask_rcnn.detector_io import init_from, load_detector
from models.mask_rcnn.detector_losses import LOSS_NAMES
from models.mask_rcnn.detector_trainer import DetectorTrainer, set_stage
from models.mask_rcnn.targets import box_head_targets
from models.training import SegmentationSGD

TINY = dict(base_width=8, fpn_channels=16, mask_head_channels=8, box_head_units=32)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco"))
    write_coco_sample(root, num_train=2, num_val=1, size=(96, 128), seed=0)
    return coco.read_coco(root, "train")


def _batch(split):
    return next(iter(coco.make_dataset(split, batch_size=2, training=False, short_side=96, long_side=128)))


def _trainer(split, stage, **kwargs):
    detector = build_mask_rcnn(split.categories.num_classes, **TINY)
    set_stage(detector, stage, **kwargs)
    trainer = DetectorTrainer(detector, stage=stage, box_batch_size=32, rpn_pre_nms_top_n=200,
                              rpn_post_nms_top_n=100, seed=0)
    trainer.compile(optimizer=SegmentationSGD(0.01, momentum=0.9, l2=0.0, global_clipnorm=5.0))
    return trainer


def _losses(trainer, batch):
    """The five losses with the same random sampling every time (only the weights differ between calls)."""
    trainer.seed_generator = keras.random.SeedGenerator(7)
    return {name: float(value) for name, value in trainer.losses_of(batch, training=True).items()}


def test_steps_on_one_batch_lower_every_loss_component(split):
    keras.utils.set_random_seed(0)
    trainer = _trainer(split, "all", trainable_backbone_stages=5, freeze_batch_norm=False)
    batch = _batch(split)
    before = _losses(trainer, batch)
    for _ in range(12):
        logs = trainer.train_on_batch(batch, return_dict=True)
    after = _losses(trainer, batch)
    assert set(logs) == {"loss"} | {f"{name}_loss" for name in LOSS_NAMES}
    # The box regression loss is only checked finite here: on this tiny random model it first rises
    # (measured: 0.49 -> 0.65 -> 0.64 -> 0.48 -> 0.40 every 4 of 24 steps), also when it is the only loss
    # minimised (0.49 -> 0.83 -> 0.38). Not a bug: smooth L1 with beta 1/9 is L1 beyond 1/9, so each SGD step
    # moves a positive's deltas by about lr |h|^2 / (RoIs sampled) whatever its error; with fc features of
    # |h|^2 ~ 900 that is 0.14 per step at lr 0.01, more under momentum: the predictions overshoot and oscillate.
    # Even the regressor alone on frozen features oscillates at lr 0.01 (0.485 -> 0.543 -> 0.499 -> 0.442 ->
    # 0.433 -> 0.478) and descends steadily at lr 0.001. The test below checks the loss's gradient does
    # descend; its values and targets are checked against torchvision in tests/models/test_detector_losses.py.
    for name in LOSS_NAMES:
        assert np.isfinite(after[name]), name
        if name != "box_regression":
            assert after[name] < before[name], (name, before[name], after[name])


def test_box_regression_falls_at_every_step_of_gradient_descent_on_the_regressor_alone(split):
    # The detector's own features of its sampled RoIs, frozen; the regressor (W, b) alone descends with step
    # 1 / L, L = sum over positives (|h|^2 + 1) / (sampled * beta) bounding the loss's curvature: the descent
    # lemma makes every step lower the loss unless its gradient is wrong (wrong class channel, wrong sign:
    # then it stalls or rises).
    trainer = _trainer(split, "all", trainable_backbone_stages=5, freeze_batch_norm=False)
    batch, stages = _batch(split), trainer.stages
    pyramid = stages["fpn"](batch["image"], training=True)
    levels = [pyramid[f"P{k}"] for k in range(2, 7)]
    rpn = stages["rpn_head"](levels, training=True)
    candidates, valid = trainer._candidates(
        batch, [*rpn, stages["anchors"]([batch["image"], *levels]), batch["image_size"], *levels])
    sampled = box_head_targets(candidates, batch["boxes"], batch["class_ids"], batch["crowd_boxes"],
                               proposal_valid=valid, num_samples=trainer.box_batch_size, seed=0)
    head = stages["box_head"]
    h = head.flatten(tf.reshape(stages["box_roi_align"]([sampled["rois"], *levels[:4]]), [-1, 7, 7, 16]))
    for fc in head.fcs:
        h = fc(h)
    positive = tf.reshape((sampled["class_ids"] > 0) & sampled["valid"], [-1])
    assert 0 < int(tf.reduce_sum(tf.cast(positive, tf.int32)))
    curvature = tf.reduce_sum(tf.boolean_mask(tf.reduce_sum(h * h, -1) + 1.0, positive)) / (
        tf.reduce_sum(tf.cast(sampled["valid"], tf.float32)) * losses.BOX_LOSS_BETA)
    kernel, bias = tf.Variable(head.box_deltas.kernel), tf.Variable(head.box_deltas.bias)
    history = []
    for _ in range(30):
        with tf.GradientTape() as tape:
            deltas = tf.reshape(h @ kernel + bias, [2, trainer.box_batch_size, -1, 4])
            loss = losses.box_regression_loss(sampled["class_ids"], sampled["deltas"], deltas, sampled["valid"])
        history.append(float(loss))
        for variable, gradient in zip((kernel, bias), tape.gradient(loss, (kernel, bias))):
            variable.assign_sub(gradient / curvature)
    assert all(b <= a + 1e-6 for a, b in zip(history, history[1:])), history
    assert history[-1] < 0.98 * history[0], history


def _trainable_paths(trainer):
    return {v.path for v in trainer.trainable_variables}


def test_each_stage_trains_exactly_its_variables(split):
    detector = build_mask_rcnn(split.categories.num_classes, **TINY)
    every = {v.path for v in detector.weights}
    statistics = {p for p in every if p.endswith(("moving_mean", "moving_variance"))}  # never trained by gradients
    backbone = {v.path for v in detector.get_layer("fpn").get_layer("backbone").weights}
    mask_head = {v.path for v in detector.get_layer("mask_head").weights}
    stem_and_stage1 = {p for p in backbone if p.split("/")[0].split("_")[0] in ("conv1", "conv2")}
    batch_norm = {p for p in backbone if p.endswith(("gamma", "beta"))}
    assert mask_head and stem_and_stage1 and batch_norm and not statistics & backbone - {
        p for p in backbone if "_bn/" in p}

    def staged(stage, **kwargs):  # re-staging one detector: each call must undo the previous stage
        set_stage(detector, stage, **kwargs)
        return _trainable_paths(DetectorTrainer(detector, stage=stage))

    assert staged("mask_head") == mask_head
    heads = staged("heads")
    assert heads == every - backbone - statistics
    assert {p.split("/")[0] for p in heads} >= {"fpn_lateral2", "fpn_output2", "rpn_head", "box_head", "mask_head"}
    assert staged("all") == every - statistics - stem_and_stage1 - batch_norm
    assert staged("mask_head") == mask_head
    assert staged("all", trainable_backbone_stages=5, freeze_batch_norm=False) == every - statistics


def test_a_mask_head_step_changes_only_the_mask_head(split):
    trainer = _trainer(split, "mask_head")
    names = [w.path for w in trainer.detector.weights]
    before = [w.numpy().copy() for w in trainer.detector.weights]
    logs = trainer.train_on_batch(_batch(split), return_dict=True)
    changed = {name for name, old, w in zip(names, before, trainer.detector.weights) if not np.array_equal(old, w.numpy())}
    assert changed and all(name.startswith("mask_head/") for name in changed)
    assert logs["loss"] == pytest.approx(logs["mask_loss"])  # the stage minimises the mask loss only


def test_ground_truth_rois_for_the_mask_head_and_an_image_without_objects(split):
    trainer = _trainer(split, "mask_head")
    trainer.mask_rois = "gt"
    batch = dict(_batch(split))
    # The second image loses its objects: it brings background RoIs only, and no NaN.
    for key in ("boxes", "class_ids", "crowd_boxes"):
        value = batch[key].numpy().copy()
        value[1] = 0
        batch[key] = value
    logs = trainer.train_on_batch(batch, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values()) and logs["mask_loss"] > 0


def test_trainer_round_trips_and_init_from_copies_weights(split, tmp_path):
    trainer = _trainer(split, "heads")
    trainer.train_on_batch(_batch(split))
    path = str(tmp_path / "trainer.keras")
    trainer.save(path)
    detector = load_detector(path)
    for a, b in zip(trainer.detector.weights, detector.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not detector.get_layer("fpn").get_layer("backbone").trainable  # the stage's flags are kept

    # Fine-tuning on other classes: everything copies but the three class-specific predictors' weights.
    other = build_mask_rcnn(split.categories.num_classes + 2, **TINY)
    skipped = init_from(other, path)
    assert sorted(skipped) == sorted(["box_head/class_logits/kernel", "box_head/class_logits/bias",
                                      "box_head/box_deltas/kernel", "box_head/box_deltas/bias",
                                      "mask_head/logits/kernel", "mask_head/logits/bias"])
    np.testing.assert_array_equal(other.get_layer("rpn_head").weights[0].numpy(),
                                  detector.get_layer("rpn_head").weights[0].numpy())
    with pytest.raises(ValueError, match="another architecture"):
        init_from(build_mask_rcnn(3, **dict(TINY, base_width=16)), path)


def test_two_replicas_take_the_step_of_one_device(split, two_replica_strategy):
    """The same SGD step from the same weights: sampling sizes that take every candidate make it deterministic,
    and frozen BatchNorm keeps per-replica statistics out of it; what is left is the losses' global means."""
    take_all = dict(rpn_batch_size=8192, box_batch_size=1024, rpn_pre_nms_top_n=200, rpn_post_nms_top_n=100)
    batch = _batch(split)
    dataset = coco.make_dataset(split, batch_size=2, training=False, short_side=96, long_side=128).take(1)
    keras.utils.set_random_seed(3)
    weights = build_mask_rcnn(split.categories.num_classes, **TINY).get_weights()

    def one_step(strategy):
        with strategy.scope():
            detector = build_mask_rcnn(split.categories.num_classes, **TINY)
            detector.set_weights(weights)
            set_stage(detector, "all")
            trainer = DetectorTrainer(detector, stage="all", seed=0, **take_all)
            trainer.compile(optimizer=SegmentationSGD(1e-3, momentum=0.0, l2=0.0))
        history = trainer.fit(dataset, epochs=1, verbose=0)
        return trainer.detector.get_weights(), history.history

    single, single_logs = one_step(tf.distribute.get_strategy())
    mirrored, mirrored_logs = one_step(two_replica_strategy)
    assert int(batch["num_instances"].numpy().min()) > 0
    for name in ("loss", "rpn_objectness_loss", "box_class_loss", "mask_loss"):
        np.testing.assert_allclose(mirrored_logs[name], single_logs[name], rtol=1e-4)
    changed = 0
    for before, a, b in zip(weights, single, mirrored):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)
        changed += not np.array_equal(before, a)
    assert changed > 20

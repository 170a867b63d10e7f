"""DetectorTrainer and set_stage: training steps lower every loss, each stage trains exactly its variables,
an image without objects trains, .keras round trips, --init-from copies weights.

Tiny detectors (ResNet-50 at base width 8, narrow heads) on a COCO-format
sample at 96x128, a few seconds per step on this CPU.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from data import coco
from data.samples.coco import write_coco_sample
from models.mask_rcnn.detector import build_mask_rcnn
from models.mask_rcnn.loading import init_from, load_detector
from models.mask_rcnn.losses import LOSS_NAMES
from models.mask_rcnn import trainer as detector_trainer
from models.mask_rcnn.trainer import DetectorTrainer, set_stage
from models.mask_rcnn.targets import mask_targets
from models.mask_rcnn.transform import detector_inputs
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


@pytest.fixture
def sampled(monkeypatch):
    """The RoI sample of the next training step (box_head_targets' output), recorded for a reference."""
    recorded = {}
    box_head_targets = detector_trainer.box_head_targets

    def recording(*args, **kwargs):
        recorded.update(box_head_targets(*args, **kwargs))
        return dict(recorded)

    monkeypatch.setattr(detector_trainer, "box_head_targets", recording)
    return recorded


def test_steps_on_one_batch_lower_every_loss_component(split):
    keras.utils.set_random_seed(0)
    trainer = _trainer(split, "all", trainable_backbone_stages=5, freeze_batch_norm=False)
    batch = _batch(split)
    before = _losses(trainer, batch)
    for _ in range(12):
        logs = trainer.train_on_batch(batch, return_dict=True)
    after = _losses(trainer, batch)
    assert set(logs) == {"loss"} | {f"{name}_loss" for name in LOSS_NAMES}
    # Box regression is checked in test_box_regression_falls_at_a_step_size_its_features_allow, not here:
    # at this lr it first rises (measured 0.49 -> 0.71 after 4 steps on proposals, a peak of 1.06 on fixed RoIs),
    # for two reasons measured there, neither a bug: (1) lr 0.01 with momentum 0.9 is past the regressor's own
    # stability bound (it rises even trained alone on fixed features); (2) on proposals the RPN's near-tied random
    # scores reorder the proposals at every step, so the fixed-seed sample holds other positives each time and
    # the value follows their targets: at lr 1e-4, the regressor barely moved, it went 0.48 -> 0.81 -> 0.56 in 12
    # steps, within 0.02 of the loss of zero predictions on the same sample.
    for name in LOSS_NAMES:
        assert np.isfinite(after[name]), name
        if name != "box_regression":
            assert after[name] < before[name], (name, before[name], after[name])


def test_box_regression_falls_at_a_step_size_its_features_allow(split):
    """The box regression loss on ground-truth-derived RoIs (mask_rois="gt": the same RoIs for the same seed,
    whatever the RPN does), evaluated with the same sampling every time:
    - the regressor alone (box_head/box_deltas, its input fixed: the box head's ReLU features) under plain SGD
      at lr 2e-4 falls at every step (measured 0.673 -> 0.644 in 8 steps). Its gradient is Lipschitz with
      L = max over classes of lambda_max(x^T x) / (beta * sampled RoIs), beta = 1/9: measured 2.7e3 on this
      sample (|x|^2 about 1.1e3 per positive), so gradient descent must fall for lr < 2 / L = 7.5e-4. This
      fails if the gradient misses the channels the loss reads, or if what trains is not what the loss sees.
    - the same regressor alone under the other test's optimizer (lr 0.01 = 13x the bound, momentum 0.9,
      clipnorm 5) rises (measured 0.673 -> 1.10 after one step): the rise in that test needs nothing else to
      move.
    - the whole model (stage "all", every loss, the trainer's own steps and sampling) at lr 1e-4 lowers it
      (measured 0.673 -> 0.654 in 12 steps).
    The loss's values and gradient equal torchvision's (tests/losses/test_detection_losses.py).
    """
    keras.utils.set_random_seed(0)
    trainer = _trainer(split, "all", trainable_backbone_stages=5, freeze_batch_norm=False)
    trainer.mask_rois = "gt"
    batch = _batch(split)
    initial = trainer.detector.get_weights()
    regressor = trainer.detector.get_layer("box_head").box_deltas.trainable_variables

    def regressor_steps(optimizer, steps):
        trainer.detector.set_weights(initial)
        values = []
        for _ in range(steps):
            trainer.seed_generator = keras.random.SeedGenerator(7)
            with tf.GradientTape() as tape:
                loss = trainer.losses_of(batch, training=True)["box_regression"]
            optimizer.apply_gradients(zip(tape.gradient(loss, regressor), regressor))
            values.append(float(loss))
        return values

    small = regressor_steps(SegmentationSGD(2e-4, momentum=0.0, l2=0.0), 8)
    assert all(b < a for a, b in zip(small, small[1:])), small
    large = regressor_steps(SegmentationSGD(0.01, momentum=0.9, l2=0.0, global_clipnorm=5.0), 5)
    assert max(large) > 1.3 * large[0], large

    trainer.detector.set_weights(initial)
    trainer.compile(optimizer=SegmentationSGD(1e-4, momentum=0.9, l2=0.0, global_clipnorm=5.0))
    before = _losses(trainer, batch)["box_regression"]
    for _ in range(12):
        trainer.train_on_batch(batch)
    after = _losses(trainer, batch)["box_regression"]
    assert after < before, (before, after)


def test_the_mask_loss_on_the_positives_alone_equals_that_of_the_fixed_slots(split, sampled):
    """The mask branch runs on the batch's positive RoIs only; before, it ran on the first
    box_batch_size / 4 sampled slots of each image (every positive is there) and the loss weighted the others 0.
    On the same batch, weights and sampling, the loss is that one, recomputed here from those slots (the
    detector's own RoIAlign and mask head on them, BCE from logits in NumPy float64)."""
    keras.utils.set_random_seed(0)
    trainer = _trainer(split, "all")
    trainer.box_batch_size = 64  # 16 slots per image: room for more than this sample's positives
    batch = _batch(split)
    loss = _losses(trainer, batch)["mask"]

    slots = 64 // 4
    class_ids = sampled["class_ids"].numpy()[:, :slots]
    positive = class_ids > 0
    assert positive.sum() == (sampled["class_ids"].numpy() > 0).sum() > 0 and not positive.all()
    pyramid = trainer.stages["fpn"](detector_inputs(batch)["images"], training=True)
    features = trainer.stages["mask_roi_align"]([sampled["rois"][:, :slots], *(pyramid[f"P{k}"] for k in range(2, 6))])
    logits = trainer.stages["mask_head"](features, training=True).numpy().astype(np.float64)
    targets = mask_targets(batch["masks"], batch["boxes"], sampled["rois"][:, :slots],
                           sampled["gt_index"][:, :slots], logits.shape[2]).numpy()
    x = np.take_along_axis(logits, class_ids[..., None, None, None], axis=-1)[..., 0][positive]
    y = targets[positive]
    expected = np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x))))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_a_batch_without_positives_trains_with_a_zero_mask_loss(split):
    """No object in either image: no positive RoI; the mask loss is 0, the compiled step finite, and the v2 mask
    head's BatchNorm statistics stay finite (its batch never empty: positive_rois' stand-in row)."""
    detector = build_mask_rcnn(split.categories.num_classes, variant="v2", **TINY)
    set_stage(detector, "all")
    trainer = DetectorTrainer(detector, box_batch_size=32, rpn_pre_nms_top_n=200, rpn_post_nms_top_n=100, seed=0)
    trainer.compile(optimizer=SegmentationSGD(0.01, momentum=0.9, l2=0.0, global_clipnorm=5.0))
    batch = dict(_batch(split))
    for key in ("boxes", "class_ids", "crowd_boxes"):
        batch[key] = tf.zeros_like(batch[key])
    logs = trainer.train_on_batch(batch, return_dict=True)
    assert logs["mask_loss"] == 0.0 and all(np.isfinite(v) for v in logs.values()), logs
    assert all(np.isfinite(w.numpy()).all() for w in detector.get_layer("mask_head").weights)


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


def test_ground_truth_rois_for_the_mask_head_and_an_image_without_objects(split, sampled):
    """The second image loses its objects: its sampled RoIs are all background, and the step's mask loss is that
    of the first image's positives alone, recomputed from the step's own sample (the detector's RoIAlign and
    mask head at the weights before the step, BCE from logits in NumPy float64)."""
    trainer = _trainer(split, "mask_head")
    trainer.mask_rois = "gt"
    trainer.run_eagerly = True  # the sample recorded below holds values, not graph tensors
    batch = dict(_batch(split))
    for key in ("boxes", "class_ids", "crowd_boxes"):
        value = batch[key].numpy().copy()
        value[1] = 0
        batch[key] = value
    initial = trainer.detector.get_weights()
    logs = trainer.train_on_batch(batch, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values()), logs

    trainer.detector.set_weights(initial)
    class_ids = sampled["class_ids"].numpy()
    positive = class_ids > 0
    assert positive[0].any() and not positive[1].any()
    pyramid = trainer.stages["fpn"](detector_inputs(batch)["images"], training=True)
    features = trainer.stages["mask_roi_align"]([sampled["rois"], *(pyramid[f"P{k}"] for k in range(2, 6))])
    logits = trainer.stages["mask_head"](features, training=True).numpy().astype(np.float64)
    targets = mask_targets(batch["masks"], batch["boxes"], sampled["rois"], sampled["gt_index"],
                           logits.shape[2]).numpy()
    x = np.take_along_axis(logits, class_ids[..., None, None, None], axis=-1)[..., 0][positive]
    y = targets[positive]
    expected = np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x))))
    np.testing.assert_allclose(logs["mask_loss"], expected, rtol=1e-5)


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


@pytest.mark.parametrize("policy, rtol", [("mixed_float16", 5e-3), ("mixed_bfloat16", 2e-2)])
def test_mixed_precision_losses_match_float32_and_its_steps_train(split, policy, rtol):
    """Under --mixed-precision's policies, on the same weights: the five losses within rtol of float32's
    (measured: 1e-3 float16, 4.5e-3 bfloat16), float32 outputs, float32 variables, finite training steps
    (float16 through Keras's loss-scale optimizer)."""
    keras.utils.set_random_seed(0)
    batch = _batch(split)
    reference = build_mask_rcnn(split.categories.num_classes, **TINY)

    def losses(detector):
        # RoIs drawn from the ground truth (mask_rois="gt") with a fixed seed: both precisions sample the same
        # RoIs and anchors, so the losses compare one to one.
        trainer = DetectorTrainer(detector, mask_rois="gt", box_batch_size=32, seed=0)
        trainer.seed_generator = keras.random.SeedGenerator(7)
        return {name: float(value) for name, value in trainer.losses_of(batch, training=True).items()}

    expected = losses(reference)
    keras.mixed_precision.set_global_policy(policy)
    try:
        detector = build_mask_rcnn(split.categories.num_classes, **TINY)
        assert detector.get_layer("rpn_head").compute_dtype == policy.split("_")[1]
        detector.set_weights(reference.get_weights())
        got = losses(detector)
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=rtol, err_msg=name)
        outputs = detector(detector_inputs(batch))  # the uint8 batch resized and normalised, as the trainer does
        for name in ("boxes", "scores", "masks"):
            assert outputs[name].dtype == tf.float32 and np.isfinite(outputs[name].numpy()).all(), name

        set_stage(detector, "all", trainable_backbone_stages=5, freeze_batch_norm=False)
        trainer = DetectorTrainer(detector, box_batch_size=32, rpn_pre_nms_top_n=200, rpn_post_nms_top_n=100, seed=0)
        trainer.compile(optimizer=SegmentationSGD(0.01, momentum=0.9, l2=0.0, global_clipnorm=5.0))
        assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
        for _ in range(3):
            logs = trainer.train_on_batch(batch, return_dict=True)
            assert all(np.isfinite(value) for value in logs.values()), logs
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(w.dtype == "float32" and np.isfinite(w.numpy()).all() for w in detector.weights)
    moved = sum(not np.array_equal(a, b) for a, b in zip(detector.get_weights(), reference.get_weights()))
    assert moved > 100  # the steps trained


def test_ordering_the_rpn_backward_after_the_roi_heads_changes_no_value_or_gradient():
    """_rpn_backward_after_roi_heads only orders the backward pass: the same tensors out, and each input's
    gradient is its own (in a graph, as in the training step)."""
    rng = np.random.default_rng(0)
    objectness, rpn_deltas = tf.constant(rng.normal(size=(2, 5))), tf.constant(rng.normal(size=(2, 5, 4)))
    levels = [tf.constant(rng.normal(size=(2, size, size, 3))) for size in (4, 2)]

    @tf.function
    def values_and_gradients(ordered):
        inputs = [objectness, rpn_deltas, *levels]
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = detector_trainer._rpn_backward_after_roi_heads(*inputs[:2], inputs[2:]) if ordered else \
                (inputs[0], inputs[1], inputs[2:])
            flat = [outputs[0], outputs[1], *outputs[2]]
            loss = sum(tf.reduce_sum(tf.sin(tensor) * (index + 1)) for index, tensor in enumerate(flat))
        return flat, tape.gradient(loss, inputs)

    (values, gradients), (expected_values, expected_gradients) = values_and_gradients(True), values_and_gradients(False)
    for got, want in zip(values + gradients, expected_values + expected_gradients):
        np.testing.assert_array_equal(got.numpy(), want.numpy())

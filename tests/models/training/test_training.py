"""Training recipe pieces: schedules, the SGD variant, the non-finite-loss guard, run folders."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import training
from models.training import run_state


def test_poly_schedule_values_at_known_steps():
    schedule = training.poly_schedule(0.01, total_steps=1000, power=0.9)
    for step in (0, 1, 250, 500, 999, 1000, 1500):
        want = 0.01 * (1 - min(step, 1000) / 1000) ** 0.9
        np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-4, atol=1e-12)  # float32 pow


def test_warmup_step_decay_values():
    schedule = training.WarmupStepDecay(0.02, milestones=[100, 200], gamma=0.1, warmup_steps=10, warmup_factor=0.001)
    want = {0: 0.02 * 0.001, 5: 0.02 * (0.001 * 0.5 + 0.5), 10: 0.02, 99: 0.02, 100: 0.002, 250: 0.0002}
    for step, value in want.items():
        np.testing.assert_allclose(float(schedule(step)), value, rtol=1e-6)
    back = training.WarmupStepDecay.from_config(schedule.get_config())
    assert float(back(150)) == pytest.approx(0.002)


def _two_layer_model():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(2, name="body", kernel_initializer="ones", bias_initializer="ones")(inputs)
    outputs = keras.layers.Dense(1, name="head", kernel_initializer="ones", bias_initializer="ones")(hidden)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("in_graph", [False, True])  # in a graph the decay waits for the gradient (update_step)
def test_segmentation_sgd_adds_l2_to_kernels_only_and_multiplies_head_lr(in_graph):
    model = _two_layer_model()
    optimizer = training.SegmentationSGD(learning_rate=0.1, momentum=0.9, l2=0.01, head_layers=["head"],
                                         head_lr_multiplier=10.0)
    variables = model.trainable_variables
    before = {v.path: v.numpy().copy() for v in variables}
    grads = [tf.fill(v.shape, 0.5) for v in variables]  # a known gradient for every variable
    optimizer.build(variables)
    apply = lambda: optimizer.apply_gradients(zip(grads, variables))  # noqa: E731
    (tf.function(apply) if in_graph else apply)()
    for v in variables:
        g = 0.5 + (0.01 * before[v.path] if v.path.endswith("kernel") else 0.0)
        lr = 0.1 * (10.0 if v.path.startswith("head/") else 1.0)
        # first momentum step: m = -lr * g, w += m
        np.testing.assert_allclose(v.numpy(), before[v.path] - lr * g, rtol=1e-6, err_msg=v.path)


def test_segmentation_sgd_round_trips_with_a_model(tmp_path):
    model = _two_layer_model()
    model.compile(optimizer=training.SegmentationSGD(training.poly_schedule(0.01, 100), l2=1e-4,
                                                     head_layers=["head"], head_lr_multiplier=10.0), loss="mse")
    model.fit(np.ones((4, 3)), np.zeros((4, 1)), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert isinstance(loaded.optimizer, training.SegmentationSGD)
    assert loaded.optimizer.head_layers == ("head",) and loaded.optimizer.l2 == 1e-4
    assert int(loaded.optimizer.iterations.numpy()) == 1  # the schedule continues where it stopped


def test_prepare_run_dir_refuses_to_train_over_an_existing_run(tmp_path):
    run = tmp_path / "run"
    assert run_state.prepare_run_dir(str(run), resume=False) is None
    (run / run_state.LAST_CHECKPOINT).write_bytes(b"weights")
    (run / run_state.STATE_FILE).write_text(json.dumps({"epochs_done": 2, "steps_done": 20, "best": 0.5}))
    with pytest.raises(run_state.RunDirError, match="--resume"):
        run_state.prepare_run_dir(str(run), resume=False)
    assert run_state.prepare_run_dir(str(run), resume=True)["epochs_done"] == 2
    assert (run / run_state.LAST_CHECKPOINT).read_bytes() == b"weights"


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    model = _two_layer_model()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x = np.ones((8, 3), np.float32)
    y = np.zeros((8, 1), np.float32)
    callbacks, guard = training.standard_callbacks(str(tmp_path), monitor="loss", mode="min")
    model.fit(x, y, batch_size=4, epochs=1, callbacks=callbacks, verbose=0)
    good = keras.saving.load_model(tmp_path / run_state.LAST_CHECKPOINT, safe_mode=True).get_weights()
    assert guard.failed_at is None and (tmp_path / "curves.png").exists() and (tmp_path / "history.csv").exists()

    y_bad = y.copy()
    y_bad[5] = np.nan  # second batch of the next epoch
    model.fit(x, y_bad, batch_size=4, epochs=3, initial_epoch=1, shuffle=False, callbacks=callbacks, verbose=0)
    assert guard.failed_at[:2] == (1, 1)
    message = guard.message(str(tmp_path))
    assert "at step 4 (epoch 2, batch 2)" in message and "last.keras (step 2)" in message
    after = keras.saving.load_model(tmp_path / run_state.LAST_CHECKPOINT, safe_mode=True).get_weights()
    for a, b in zip(good, after):
        np.testing.assert_array_equal(a, b)
    assert json.loads((tmp_path / run_state.STATE_FILE).read_text())["epochs_done"] == 1
    assert not os.path.exists(tmp_path / "epoch_002.keras")


def test_checkpoints_keep_the_best_and_rotate_epoch_files(tmp_path):
    model = _two_layer_model()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    callbacks, _ = training.standard_callbacks(str(tmp_path), monitor="val_score", mode="max", keep=2)
    for cb in callbacks:
        cb.set_model(model)
        cb.on_train_begin()
    scores = [0.2, 0.7, 0.5, 0.6]
    for epoch, score in enumerate(scores):
        for cb in callbacks:
            cb.on_epoch_end(epoch, {"loss": 1.0, "val_score": score})
    files = sorted(os.listdir(tmp_path))
    assert [f for f in files if f.startswith("epoch_")] == ["epoch_003.keras", "epoch_004.keras"]
    assert json.loads((tmp_path / run_state.STATE_FILE).read_text())["best"] == pytest.approx(0.7)
    assert {"best.keras", "last.keras", "curves.png"} <= set(files)


def test_on_a_real_pspnet_exactly_the_ppm_head_and_aux_variables_get_the_head_learning_rate():
    from models.pspnet.model import build_pspnet, head_layer_names

    model = build_pspnet(5, backbone="resnet18", base_width=8, input_shape=(32, 32, 3))
    optimizer = training.SegmentationSGD(0.1, momentum=0.0, l2=0.0, head_layers=head_layer_names(model),
                                         head_lr_multiplier=10.0)
    variables = model.trainable_variables
    backbone = {id(v) for v in model.get_layer("backbone").trainable_variables}
    # The new layers, named independently of head_layer_names: the PSPNet graph's ppm*, head_*, aux* layers.
    new_layers = [layer for layer in model.layers if layer.name.startswith(("ppm", "head_", "aux"))]
    new = {id(v) for layer in new_layers for v in layer.trainable_variables}
    assert backbone and new and not backbone & new and backbone | new == {id(v) for v in variables}
    before = [v.numpy().copy() for v in variables]
    optimizer.apply_gradients([(tf.ones_like(v), v) for v in variables])
    for v, old in zip(variables, before):
        step = old - v.numpy()  # lr x gradient of ones
        np.testing.assert_allclose(step, 1.0 if id(v) in new else 0.1, rtol=1e-5, err_msg=v.path)


def test_segmentation_sgd_momentum_steps_match_numpy_and_keras_sgd():
    # Three steps with different gradients: SegmentationSGD (without L2, its in-place momentum kernel) against
    # NumPy's m = 0.9 m - lr g, w += m, and against keras.optimizers.SGD on the same gradients.
    rng = np.random.default_rng(0)
    models = [_two_layer_model(), _two_layer_model()]
    optimizers = [training.SegmentationSGD(learning_rate=0.1, momentum=0.9, l2=0.0),
                  keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)]
    expected = {v.path: v.numpy().astype(np.float64) for v in models[0].trainable_variables}
    momentum = {path: 0.0 for path in expected}
    for _ in range(3):
        grads = {path: rng.normal(size=w.shape) for path, w in expected.items()}
        for model, optimizer in zip(models, optimizers):
            optimizer.apply_gradients([(tf.constant(grads[v.path], tf.float32), v) for v in model.trainable_variables])
        for path in expected:
            momentum[path] = 0.9 * momentum[path] - 0.1 * grads[path]
            expected[path] = expected[path] + momentum[path]
    for ours, keras_sgd in zip(*(model.trainable_variables for model in models)):
        np.testing.assert_allclose(ours.numpy(), expected[ours.path], rtol=1e-5, atol=1e-6, err_msg=ours.path)
        np.testing.assert_allclose(ours.numpy(), keras_sgd.numpy(), rtol=1e-6, atol=1e-7, err_msg=ours.path)

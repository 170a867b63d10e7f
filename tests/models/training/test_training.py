"""Training recipe pieces: schedules, the SGD variant, the non-finite-loss guard, run folders.

The SGD variant and the poly schedule are checked against torch.optim.SGD and LambdaLR."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

from models import training
from models.training import run_state


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


def _torch_sgd_steps(model, grads, *, lr, momentum, l2, head_lr_multiplier, schedule=None):
    """The reference: torch.optim.SGD on float64 copies of the model's variables, fed the same gradients.

    One parameter group per variable: the "head" layer's at head_lr_multiplier x lr, torch's (coupled)
    weight_decay = l2 on the kernels only; `schedule` (step -> factor) through torch's LambdaLR, which scales
    every group's own lr. Returns {path: float64 array} after len(grads) steps.
    """
    variables = model.trainable_variables
    params = [torch.tensor(v.numpy(), dtype=torch.float64, requires_grad=True) for v in variables]
    groups = [{"params": [p], "lr": lr * (head_lr_multiplier if v.path.startswith("head/") else 1.0),
               "weight_decay": l2 if v.path.endswith("/kernel") else 0.0} for v, p in zip(variables, params)]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule or (lambda step: 1.0))
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = torch.from_numpy(g)
        optimizer.step()
        scheduler.step()
    return {v.path: p.detach().numpy() for v, p in zip(variables, params)}


@pytest.mark.parametrize("in_graph", [False, True])  # in a graph the decay waits for the gradient (update_step)
def test_poly_schedule_head_lr_and_l2_match_torch_sgd_with_lambda_lr(in_graph):
    """SegmentationSGD(poly_schedule(...)) against torch's SGD + LambdaLR on the same gradients, 7 steps with
    total_steps 5: the rate of each step (step 0 at the base rate, 0 from step 5 on), the head's 10x rate and
    the L2 term on kernels only. Momentum 0 here (see the next test for why)."""
    total, power = 5, 0.9
    model = _two_layer_model()
    optimizer = training.SegmentationSGD(training.poly_schedule(0.1, total, power), momentum=0.0, l2=0.01,
                                         head_layers=["head"], head_lr_multiplier=10.0)
    variables = model.trainable_variables
    rng = np.random.default_rng(0)
    grads = [[rng.normal(size=v.shape) for v in variables] for _ in range(7)]
    # semseg's poly_learning_rate (base_lr * (1 - curr_iter / max_iter) ** power) as a factor; 0 once done.
    want = _torch_sgd_steps(model, grads, lr=0.1, momentum=0.0, l2=0.01, head_lr_multiplier=10.0,
                            schedule=lambda step: max(1.0 - step / total, 0.0) ** power)
    optimizer.build(variables)
    apply = lambda g: optimizer.apply_gradients(zip(g, variables))  # noqa: E731
    apply = tf.function(apply) if in_graph else apply
    for step_grads in grads:
        apply([tf.constant(g, tf.float32) for g in step_grads])
    for v in variables:
        np.testing.assert_allclose(v.numpy(), want[v.path], rtol=1e-5, atol=1e-7, err_msg=v.path)


def test_momentum_head_lr_and_l2_match_torch_sgd_at_a_constant_rate():
    """With momentum 0.9 (the paper's), at a constant rate: torch's SGD on the same gradients, 4 steps.

    At a constant rate torch's momentum (b = 0.9 b + g; w -= lr b) and Keras's / Caffe's (m = 0.9 m - lr g;
    w += m) give the same weights; under a changing rate they differ (Keras scales each gradient by the rate of
    its own step, torch scales the whole buffer by the current rate), which is why the poly test above runs
    without momentum."""
    model = _two_layer_model()
    optimizer = training.SegmentationSGD(learning_rate=0.05, momentum=0.9, l2=0.01, head_layers=["head"],
                                         head_lr_multiplier=10.0)
    variables = model.trainable_variables
    rng = np.random.default_rng(1)
    grads = [[rng.normal(size=v.shape) for v in variables] for _ in range(4)]
    want = _torch_sgd_steps(model, grads, lr=0.05, momentum=0.9, l2=0.01, head_lr_multiplier=10.0)
    for step_grads in grads:
        optimizer.apply_gradients(zip([tf.constant(g, tf.float32) for g in step_grads], variables))
    for v in variables:
        np.testing.assert_allclose(v.numpy(), want[v.path], rtol=1e-5, atol=1e-7, err_msg=v.path)


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

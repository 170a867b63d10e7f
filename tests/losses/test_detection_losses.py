"""Detection losses (RPN objectness / box, box-head class / regression) against torchvision's own loss code.

torchvision's RegionProposalNetwork.compute_loss and roi_heads.fastrcnn_loss get
the same logits, deltas, labels and targets; its random sampler is replaced by
the same sampled sets ours are given. torchvision orders deltas (dx, dy, dw, dh),
ours (dy, dx, dh, dw). The box regression's gradient against torch's autograd.
Then: empty cases, 2 replicas == 1 device, serialization.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork

import losses

XY = [1, 0, 3, 2]
K = 4  # object classes; K + 1 with the background


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def test_smooth_l1_equals_torch():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 0.3, (2, 500)).astype(np.float32)
    for beta in (1 / 9, 1.0):
        np.testing.assert_allclose(losses.smooth_l1(a, b, beta).numpy(),
                                   F.smooth_l1_loss(_t(b), _t(a), beta=beta, reduction="none").numpy(), rtol=1e-6)


def _rpn_case(rng, images=2, anchors=300):
    labels = rng.choice([-1.0, 0.0, 1.0], size=(images, anchors), p=[0.6, 0.3, 0.1]).astype(np.float32)
    labels[-1][labels[-1] == 1] = 0.0  # an image without positives
    logits = rng.normal(0, 3, (images, anchors)).astype(np.float32)
    targets = rng.normal(0, 0.2, (images, anchors, 4)).astype(np.float32)
    preds = rng.normal(0, 0.2, (images, anchors, 4)).astype(np.float32)
    return labels, logits, targets, preds


def test_rpn_losses_equal_torchvision_compute_loss():
    labels, logits, targets, preds = _rpn_case(np.random.default_rng(1))
    rpn = RegionProposalNetwork(None, None, 0.7, 0.3, 256, 0.5, {"training": 1}, {"training": 1}, 0.7)
    rpn.fg_bg_sampler = lambda per_image: ([(lab == 1).to(torch.uint8) for lab in per_image],
                                           [(lab == 0).to(torch.uint8) for lab in per_image])
    objectness, box = rpn.compute_loss(_t(logits.reshape(-1, 1)), _t(preds[..., XY].reshape(-1, 4)),
                                       [_t(lab) for lab in labels], [_t(t[:, XY]) for t in targets])
    np.testing.assert_allclose(losses.rpn_objectness_loss(labels, logits).numpy(), objectness.item(), rtol=1e-5)
    np.testing.assert_allclose(losses.rpn_box_loss(labels, targets, preds).numpy(), box.item(), rtol=1e-5)


@pytest.mark.parametrize("per_class_axis", [True, False])
def test_box_head_losses_equal_torchvision_fastrcnn_loss(per_class_axis):
    rng = np.random.default_rng(2)
    images, rois = 3, 20
    class_ids = rng.integers(0, K + 1, (images, rois)).astype(np.int32)
    valid = rng.random((images, rois)) < 0.8
    class_ids[~valid] = 0
    class_ids[2] = 0  # an image with background only
    logits = rng.normal(0, 2, (images, rois, K + 1)).astype(np.float32)
    preds = rng.normal(0, 0.5, (images, rois, K + 1, 4)).astype(np.float32)
    targets = rng.normal(0, 0.5, (images, rois, 4)).astype(np.float32)
    targets[~valid] = np.nan  # padding must not reach the losses
    logits[~valid] = np.nan
    expected_class, expected_box = fastrcnn_loss(
        _t(logits[valid]), _t(preds[valid][..., XY].reshape(-1, 4 * (K + 1))),
        [_t(class_ids[valid].astype(np.int64))], [_t(np.nan_to_num(targets[valid][:, XY]))])
    pred_input = preds if per_class_axis else preds.reshape(images, rois, 4 * (K + 1))
    np.testing.assert_allclose(losses.box_class_loss(class_ids, logits, valid).numpy(), expected_class.item(),
                               rtol=1e-5)
    np.testing.assert_allclose(losses.box_regression_loss(class_ids, targets, pred_input, valid).numpy(),
                               expected_box.item(), rtol=1e-5)



def test_box_regression_gradient_equals_torchvision_autograd():
    """The gradient reaches exactly the positives' true-class deltas, as torch's autograd through fastrcnn_loss
    computes it (the values alone would not show a gradient stopped or sent to other channels)."""
    rng = np.random.default_rng(3)
    images, rois = 2, 24
    class_ids = rng.integers(0, K + 1, (images, rois)).astype(np.int32)
    valid = rng.random((images, rois)) < 0.8
    class_ids[~valid] = 0
    # Both sides of smooth L1's kink (beta = 1/9): quadratic and linear elements.
    preds = rng.normal(0, 0.2, (images, rois, K + 1, 4)).astype(np.float32)
    targets = rng.normal(0, 0.2, (images, rois, 4)).astype(np.float32)
    torch_preds = _t(preds[valid][..., XY].reshape(-1, 4 * (K + 1))).requires_grad_()
    _, expected = fastrcnn_loss(torch.zeros(int(valid.sum()), K + 1), torch_preds,
                                [_t(class_ids[valid].astype(np.int64))], [_t(targets[valid][:, XY])])
    expected.backward()
    expected_grad = torch_preds.grad.numpy().reshape(-1, K + 1, 4)[..., XY]
    tf_preds = tf.constant(preds)
    with tf.GradientTape() as tape:
        tape.watch(tf_preds)
        loss = losses.box_regression_loss(class_ids, targets, tf_preds, valid)
    grad = tape.gradient(loss, tf_preds).numpy()
    np.testing.assert_allclose(grad[valid], expected_grad, rtol=1e-5, atol=1e-8)
    assert not grad[~valid].any()
    assert np.count_nonzero(np.abs(grad).sum(-1)) == np.count_nonzero(class_ids)  # one class slot per positive

def test_nothing_sampled_or_no_positive_gives_zero_and_finite_losses():
    labels = -np.ones((2, 10), np.float32)
    logits, deltas = np.zeros((2, 10), np.float32), np.ones((2, 10, 4), np.float32)
    assert losses.rpn_objectness_loss(labels, logits).numpy() == 0.0
    assert losses.rpn_box_loss(labels, deltas, 0 * deltas).numpy() == 0.0
    negatives = np.zeros((2, 10), np.float32)
    assert losses.rpn_objectness_loss(negatives, logits).numpy() == pytest.approx(np.log(2.0))
    assert losses.rpn_box_loss(negatives, deltas, 0 * deltas).numpy() == 0.0
    background, valid = np.zeros((2, 6), np.int32), np.ones((2, 6), bool)
    class_logits = np.zeros((2, 6, K + 1), np.float32)
    assert losses.box_class_loss(background, class_logits, valid).numpy() == pytest.approx(np.log(K + 1.0))
    assert losses.box_regression_loss(background, np.ones((2, 6, 4)), np.zeros((2, 6, K + 1, 4)),
                                      valid).numpy() == 0.0
    assert losses.box_class_loss(background, class_logits, ~valid).numpy() == 0.0


class TinyHead(keras.Model):
    """[B, N, F] features -> a Dense prediction reshaped to the loss's y_pred; y is the loss's dict."""

    def __init__(self, units, shape, loss, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(units, kernel_initializer=keras.initializers.GlorotUniform(0))
        self.shape_tail = shape
        self.loss_object = loss

    def call(self, features):
        out = self.dense(features)
        return tf.reshape(out, tf.concat([tf.shape(out)[:2], self.shape_tail], axis=0))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return self.loss_object(y, y_pred)


def _one_step(make_loss, units, shape, features, y, strategy=None):
    scope = strategy.scope() if strategy is not None else keras.utils.custom_object_scope({})
    with scope:
        model = TinyHead(units, shape, make_loss())
        model(features[:1])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
    model.fit(features, y, batch_size=len(features), epochs=1, shuffle=False, verbose=0)
    return [w.numpy() for w in model.weights]


def _distribution_cases():
    rng = np.random.default_rng(3)
    n = 12
    # Images 0, 1 (replica 0) sample far fewer elements than images 2, 3 (replica 1).
    labels = rng.choice([0.0, 1.0], size=(4, n)).astype(np.float32)
    labels[:2, 3:] = -1.0
    class_ids = rng.integers(1, K + 1, (4, n)).astype(np.int32)
    valid = np.ones((4, n), np.float32)  # 0/1: MirroredStrategy's input pipeline cannot split bool tensors
    valid[:2, 2:] = 0.0
    class_ids[:, ::2] = 0
    deltas = rng.normal(0, 0.3, (4, n, 4)).astype(np.float32)
    return [
        (losses.RPNObjectnessLoss, 1, [], {"labels": labels}),
        (losses.RPNBoxLoss, 4, [4], {"labels": labels, "deltas": deltas}),
        (losses.BoxClassLoss, K + 1, [K + 1], {"class_ids": class_ids, "valid": valid}),
        (losses.BoxRegressionLoss, 4 * (K + 1), [K + 1, 4],
         {"class_ids": class_ids, "deltas": deltas, "valid": valid}),
    ]


@pytest.mark.parametrize("case", range(4), ids=["rpn_objectness", "rpn_box", "box_class", "box_regression"])
def test_two_replicas_equal_one_device(case, two_replica_strategy):
    make_loss, units, shape, y = _distribution_cases()[case]
    features = np.random.default_rng(4).normal(size=(4, 12, 3)).astype(np.float32)
    single = _one_step(make_loss, units, shape, features, y)
    mirrored = _one_step(make_loss, units, shape, features, y, two_replica_strategy)
    assert any(np.abs(w).max() > 0 for w in single)
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_detection_loss_objects_round_trip():
    for loss in (losses.RPNObjectnessLoss(), losses.RPNBoxLoss(beta=0.5), losses.BoxClassLoss(),
                 losses.BoxRegressionLoss(beta=0.25)):
        back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
        assert type(back) is type(loss) and back.get_config() == loss.get_config()


class PerReplicaMeanBoxLoss(keras.losses.Loss):
    """The box-head regression loss as a mean per replica: what the check above must catch."""

    def call(self, y_true, y_pred):
        return losses.box_regression_loss(y_true["class_ids"], y_true["deltas"], y_pred, y_true["valid"])


def test_the_same_check_catches_a_per_replica_mean(two_replica_strategy):
    _, units, shape, y = _distribution_cases()[3]
    features = np.random.default_rng(4).normal(size=(4, 12, 3)).astype(np.float32)
    single = _one_step(PerReplicaMeanBoxLoss, units, shape, features, y)
    mirrored = _one_step(PerReplicaMeanBoxLoss, units, shape, features, y, two_replica_strategy)
    assert any(not np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(single, mirrored))

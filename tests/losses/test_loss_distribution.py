"""Two replicas must take exactly the step one device takes on the same global batch.

tests/conftest.py splits the CPU into two logical devices before TensorFlow starts
and provides one shared MirroredStrategy over them.
The replicas are given different numbers of ignored pixels / positive RoIs, the
case where a mean of per-replica means differs from the global mean.
"""
import numpy as np
import keras

import losses

C = 5


def _seg_model(seed):
    inputs = keras.Input((6, 6, 3))
    outputs = keras.layers.Conv2D(C, 3, padding="same",
                                  kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
    return keras.Model(inputs, outputs)


def _seg_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 6, 3)).astype(np.float32)
    y = rng.integers(0, C, size=(4, 6, 6)).astype(np.int32)
    y[0, :5] = 255  # replica 0 (images 0, 1) keeps far fewer valid pixels than replica 1
    y[1, :4] = 255
    return x, y


def _one_step_weights(make_model, loss, x, y, strategy=None):
    scope = strategy.scope() if strategy is not None else keras.utils.custom_object_scope({})
    with scope:
        model = make_model(0)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss=loss)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    return [w.numpy() for w in model.weights]


def _assert_same(a, b):
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)


def _differ(a, b):
    return any(not np.allclose(wa, wb, rtol=1e-5, atol=1e-6) for wa, wb in zip(a, b))


def test_pixelwise_loss_two_replicas_equal_one_device(two_replica_strategy):
    x, y = _seg_data()
    single = _one_step_weights(_seg_model, losses.PixelwiseSoftmaxCrossEntropy(C), x, y)
    mirrored = _one_step_weights(_seg_model, losses.PixelwiseSoftmaxCrossEntropy(C), x, y,
                                 two_replica_strategy)
    _assert_same(single, mirrored)


def test_the_same_check_catches_a_per_replica_mean(two_replica_strategy):
    # Keras's ignore_class averages per replica: on this batch the two runs part ways,
    # which shows the check above can fail.
    x, y = _seg_data()
    make_loss = lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)  # noqa: E731
    single = _one_step_weights(_seg_model, make_loss(), x, y)
    mirrored = _one_step_weights(_seg_model, make_loss(), x, y, two_replica_strategy)
    assert _differ(single, mirrored)


class TinyMaskHead(keras.Model):
    """[B, R, h, w, F] features -> [B, R, h, w, K] logits; y is {"masks", "class_ids"}."""

    def __init__(self, seed, **kwargs):
        super().__init__(**kwargs)
        self.classifier = keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(seed))
        self.mask_loss = losses.MaskRCNNMaskLoss(from_logits=True)

    def call(self, features):
        return self.classifier(features)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return self.mask_loss(y, y_pred)


def test_mask_loss_two_replicas_equal_one_device(two_replica_strategy):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(4, 3, 4, 4, 2)).astype(np.float32)
    masks = (rng.random((4, 3, 4, 4)) > 0.5).astype(np.float32)
    class_ids = np.array([[1, 0, 0], [0, 0, 0], [2, 1, 2], [1, 2, 1]], np.int32)  # 1 vs 6 positives
    y = {"masks": masks, "class_ids": class_ids}

    def run(strategy=None):
        scope = strategy.scope() if strategy is not None else keras.utils.custom_object_scope({})
        with scope:
            model = TinyMaskHead(0)
            model(features[:1])  # creates the weights
            model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
        model.fit(features, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        return [w.numpy() for w in model.weights]

    _assert_same(run(), run(two_replica_strategy))

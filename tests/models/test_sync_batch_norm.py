"""Synchronized batch norm (the sync_bn of every model under a strategy): two replicas with different
data normalise with the statistics of the global batch, checked against NumPy float64 on the whole batch."""
import numpy as np
import tensorflow as tf

from models.layers import FusedBatchNormalization


def _run(strategy, synchronized, halves):
    with strategy.scope():
        layer = FusedBatchNormalization(momentum=0.0, epsilon=1e-3, synchronized=synchronized)
        layer.build((None, 4, 5, 3))
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(halves[ctx.replica_id_in_sync_group], tf.float32))
    outputs = strategy.run(tf.function(lambda x: layer(x, training=True)), args=(values,))
    return [o.numpy() for o in strategy.experimental_local_results(outputs)], layer


def test_two_replicas_with_different_data_use_the_global_batch_statistics(two_replica_strategy):
    rng = np.random.default_rng(0)
    halves = [rng.normal(-3.0, 1.0, size=(2, 4, 5, 3)), rng.normal(5.0, 2.0, size=(2, 4, 5, 3))]
    whole = np.concatenate(halves)
    mean, var = whole.mean(axis=(0, 1, 2)), whole.var(axis=(0, 1, 2))
    outputs, layer = _run(two_replica_strategy, True, halves)
    for x, y in zip(halves, outputs):
        np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-5)  # momentum 0: the batch's
    n = whole.size // 3
    moving = layer.moving_variance.numpy()
    assert np.allclose(moving, var, rtol=1e-4) or np.allclose(moving, var * n / (n - 1), rtol=1e-4), (moving, var)

    # Without synchronisation each replica would use its own half's statistics: the check above can fail.
    local, _ = _run(two_replica_strategy, False, halves)
    own = (halves[0] - halves[0].mean(axis=(0, 1, 2))) / np.sqrt(halves[0].var(axis=(0, 1, 2)) + 1e-3)
    np.testing.assert_allclose(local[0], own, rtol=1e-4, atol=1e-4)
    assert not np.allclose(local[0], outputs[0], atol=0.1)

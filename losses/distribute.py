"""Exact global means under tf.distribute.

A masked loss (ignored pixels, padded RoIs) is a mean over a data-dependent
number of elements. Under a strategy each replica sees part of the global batch
and the gradients of the replicas' losses are summed. For the summed gradient
to be that of the *global* mean, each replica must return

    (sum of its own element losses) / (number of valid elements on all replicas)

which needs one all-reduce of the count. Averaging per-replica means instead
weights replicas equally however many valid elements they hold (what Keras's
`ignore_class` does), and returning an already reduced scalar from a Keras
`Loss.call` skips Keras's own 1/num_replicas scaling (Keras reduces what `call`
returns and scales only per-element losses: with MirroredStrategy on 2 replicas
one SGD step came out twice as large): both give wrong steps.
"""
import tensorflow as tf


def global_count(count):
    """Sum a per-replica element count over all replicas in sync (identity outside a strategy)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return count
    return context.all_reduce(tf.distribute.ReduceOp.SUM, count)


def replica_share_of_mean(total, count):
    """This replica's share of the global mean: total / global count, 0.0 when nothing is valid.

    total, count: scalar float32 for this replica. Summing the result over the
    replicas gives sum(total) / sum(count). Outside a strategy it is the plain mean.
    """
    return tf.math.divide_no_nan(total, global_count(count))

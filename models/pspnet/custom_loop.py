"""PSPNet training with strategy.run, for MultiWorkerMirroredStrategy (Keras fit is not dependable under it).

Same losses, optimizer, checkpoints and resume as the fit path in
models/pspnet/recipe.py; the chief (task 0) writes the run folder, the other
workers write nothing. No per-epoch validation here: evaluate.py scores the
checkpoints.
"""
import os

import keras
import tensorflow as tf

from models.recipes import is_chief


def train_custom_loop(config, strategy, state, epochs, steps_per_epoch, total_steps):
    """Trains config's run (resuming from `state` when given) under `strategy`; returns the run folder."""
    from models.pspnet.recipe import build_compiled_pspnet, train_dataset
    from models.training import LAST_CHECKPOINT, standard_callbacks

    chief = is_chief(strategy)
    with strategy.scope():
        if state:
            model = keras.saving.load_model(os.path.join(config.out, LAST_CHECKPOINT))
        else:
            model = build_compiled_pspnet(config, total_steps, sync_bn=strategy.num_replicas_in_sync > 1)
    loss_main, loss_aux = model.loss["main"], model.loss["aux"]
    optimizer = model.optimizer
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: train_dataset(config, config.batch_size, ctx))
    iterator = iter(dataset)

    @tf.function(jit_compile=config.jit_compile)
    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            # Each replica's loss is its share of the global mean (losses/distribute.py): the summed gradients are exact.
            loss = loss_main(labels["main"], outputs["main"]) + config.aux_weight * loss_aux(labels["aux"], outputs["aux"])
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    @tf.function
    def train_step(iterator):
        images, labels = next(iterator)
        per_replica = strategy.run(replica_step, args=(images, labels))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    callbacks, guard = standard_callbacks(config.out, monitor="loss", mode="min", keep=config.keep_checkpoints,
                                          initial_state=state, is_chief=chief)
    callback_list = keras.callbacks.CallbackList(callbacks, model=model)
    callback_list.on_train_begin()
    for epoch in range(state["epochs_done"] if state else 0, epochs):
        callback_list.on_epoch_begin(epoch)
        total = 0.0
        for step in range(steps_per_epoch):
            loss = float(train_step(iterator))
            total += loss
            callback_list.on_train_batch_end(step, {"loss": total / (step + 1)})
            if guard.failed_at is not None:
                break
        callback_list.on_epoch_end(epoch, {"loss": total / (step + 1)})
        if chief and config.verbose:
            print(f"epoch {epoch + 1}/{epochs}: loss {total / (step + 1):.4f}", flush=True)
        if guard.failed_at is not None:
            break
    callback_list.on_train_end()
    if guard.failed_at is not None:
        raise SystemExit(guard.message(config.out))
    return config.out

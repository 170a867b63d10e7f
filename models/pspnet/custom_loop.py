"""PSPNet training with strategy.run, for MultiWorkerMirroredStrategy (Keras fit is not dependable under it).

Same losses, optimizer, checkpoints and resume as the fit path in
models/pspnet/recipe.py. The chief (task 0) writes the run folder; the other
workers write nothing, and at the start take every variable (weights,
optimizer slots and step, random-generator states) from the chief, so all
workers continue from the chief's saved step whatever their --out holds. No
per-epoch validation here: evaluate.py scores the checkpoints.
"""
import keras
import tensorflow as tf

from models.recipes import is_chief


def copy_from_chief(strategy, variables):
    """Sets `variables` on every worker to the chief's values (an exact all-reduce: the chief's value + zeros).

    Values travel as float64: exact for float16/32 weights and for integers below 2**53 (steps, seeds).
    """
    @tf.function
    def gather():
        def replica_fn():
            first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
            return [tf.where(first, tf.cast(v, tf.float64), tf.zeros(v.shape, tf.float64)) for v in variables]

        per_replica = strategy.run(replica_fn)
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in per_replica]

    for variable, value in zip(variables, gather()):
        variable.assign(tf.cast(value, variable.dtype))


def train_custom_loop(config, strategy, state, epochs, steps_per_epoch, total_steps):
    """Trains config's run (the chief resuming from `state` when given) under `strategy`; returns the run folder."""
    from models.run_state import CheckpointSaveError, checkpoint_path, restore_seed_states
    from models.pspnet.recipe import build_compiled_pspnet, train_dataset
    from models.training import raise_if_interrupted, standard_callbacks

    chief = is_chief(strategy)
    # Every worker creates the same variables in the same order (the strategy pairs their creation
    # across workers); only then does the chief read its checkpoint into them.
    with strategy.scope():
        model = build_compiled_pspnet(config, total_steps, sync_bn=strategy.num_replicas_in_sync > 1)
        optimizer = model.optimizer
        optimizer.build(model.trainable_variables)  # its slots exist before the chief's values come in
    if state:
        model.load_weights(checkpoint_path(config.out, state))  # weights and optimizer state
        restore_seed_states(model, state.get("seed_states"))
    copy_from_chief(strategy, list(model.variables) + list(optimizer.variables))
    start_step = int(optimizer.iterations.numpy())
    if config.verbose:
        print(f"worker {'chief' if chief else 'other'}: starting at step {start_step}", flush=True)
    loss_main, loss_aux = model.loss["main"], model.loss["aux"]
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: train_dataset(config, config.batch_size, ctx).skip(start_step))
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

    callbacks, _ = standard_callbacks(config.out, monitor="loss", mode="min", keep=config.keep_checkpoints,
                                      initial_state=state, is_chief=chief, save_every=config.save_every)
    callback_list = keras.callbacks.CallbackList(callbacks, model=model, epochs=epochs, steps=steps_per_epoch)
    model.stop_training = False
    try:
        callback_list.on_train_begin()
        for epoch in range(start_step // steps_per_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            total, count = 0.0, 0
            for batch in range(max(start_step - epoch * steps_per_epoch, 0), steps_per_epoch):
                total += float(train_step(iterator))
                count += 1
                callback_list.on_train_batch_end(batch, {"loss": total / count})
                if model.stop_training:
                    break
            callback_list.on_epoch_end(epoch, {"loss": total / max(count, 1)})
            if chief and config.verbose:
                print(f"epoch {epoch + 1}/{epochs}: loss {total / max(count, 1):.4f}", flush=True)
            if model.stop_training:
                break
        callback_list.on_train_end()
    except CheckpointSaveError as error:
        raise SystemExit(str(error))
    raise_if_interrupted(callbacks)
    return config.out

"""Training with strategy.run, for MultiWorkerMirroredStrategy (Keras fit is not dependable under it).

Every recipe's multi-worker run goes through `train_with_strategy_run`: the
recipe builds its compiled model and says what one replica does with one
batch; this module does the rest, the same way for PSPNet and Mask R-CNN:
same checkpoints, resume, curves and stop signals as the fit path
(models.training.callbacks.standard_callbacks).

The chief (task 0) writes the run folder; the other workers write nothing, and
at the start take every variable (weights, optimizer slots and step,
random-generator states) from the chief, so all workers continue from the
chief's saved step whatever their --out holds. No per-epoch validation here:
evaluate.py scores the checkpoints.
"""
import keras
import tensorflow as tf

from models.training.recipe import is_chief


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


def replicated_model(strategy, build_model, run_dir, state):
    """(model, start_step): the compiled model on every worker, holding the chief's saved state when resuming.

    build_model(): the compiled keras.Model to train (called inside strategy.scope()); what the run saves.
    state: the chief's saved state (models.training.run_state), None elsewhere; start_step is then the
    chief's optimizer step on every worker.
    """
    from models.training.run_state import checkpoint_path, restore_seed_states

    # Every worker creates the same variables in the same order (the strategy pairs their creation
    # across workers); only then does the chief read its checkpoint into them.
    with strategy.scope():
        model = build_model()
        model.optimizer.build(model.trainable_variables)  # its slots exist before the chief's values come in
    if state:
        model.load_weights(checkpoint_path(run_dir, state))  # weights and optimizer state
        restore_seed_states(model, state.get("seed_states"))
    copy_from_chief(strategy, list(model.variables) + list(model.optimizer.variables))
    return model, int(model.optimizer.iterations.numpy())


def train_with_strategy_run(config, strategy, model, state, *, start_step, total_steps, steps_per_epoch,
                            make_replica_step, dataset_fn, curve_components=()):
    """Trains `model` (from replicated_model) under `strategy` from start_step to optimizer step total_steps.

    make_replica_step(model): a function of one per-replica batch that applies one optimizer step and returns
      a dict of scalar losses, each this replica's share of a global mean (losses/distribute.py), so their sum
      over replicas is the global value; one of them is "loss" (what is minimised).
    dataset_fn(input_context, start_step): this worker's repeated training batches, the first start_step
      global steps already left out (the same data order as a run that was never stopped).
    curve_components: logged loss names drawn in curves.png beside "loss".
    Epochs as in fit (models.training.callbacks.epoch_spans): the last one ends at total_steps.
    """
    from models.training.callbacks import epoch_spans, raise_if_interrupted, standard_callbacks

    chief = is_chief(strategy)
    if config.verbose:
        print(f"worker {'chief' if chief else 'other'}: starting at step {start_step}", flush=True)
    iterator = iter(strategy.distribute_datasets_from_function(lambda ctx: dataset_fn(ctx, start_step)))
    replica_step = make_replica_step(model)

    @tf.function
    def train_step(iterator):
        per_replica = strategy.run(replica_step, args=(next(iterator),))
        return {name: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                for name, value in per_replica.items()}

    callbacks, _ = standard_callbacks(config.out, monitor="loss", mode="min", keep=config.keep_checkpoints,
                                      initial_state=state, is_chief=chief, save_every=config.save_every,
                                      curve_components=curve_components)
    spans = epoch_spans(start_step, total_steps, steps_per_epoch)
    epochs = spans[-1][0] + 1 if spans else 0
    callback_list = keras.callbacks.CallbackList(callbacks, model=model, epochs=epochs, steps=steps_per_epoch)
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch, first, end in spans:
        # The epoch's length as its batches count them (RunCheckpoints saves the epoch at its last batch).
        callback_list.set_params({"epochs": epochs, "steps": end - epoch * steps_per_epoch,
                                  "verbose": config.verbose})
        callback_list.on_epoch_begin(epoch)
        totals, count = {}, 0
        for batch in range(first - epoch * steps_per_epoch, end - epoch * steps_per_epoch):
            for name, value in train_step(iterator).items():
                totals[name] = totals.get(name, 0.0) + float(value)
            count += 1
            callback_list.on_train_batch_end(batch, {name: total / count for name, total in totals.items()})
            if model.stop_training:
                break
        means = {name: total / max(count, 1) for name, total in totals.items()}
        callback_list.on_epoch_end(epoch, means)
        if chief and config.verbose:
            print(f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()), flush=True)
        if model.stop_training:
            break
    callback_list.on_train_end()
    raise_if_interrupted(callbacks)
    return config.out

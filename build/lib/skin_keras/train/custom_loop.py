"""`fit()` as a loop of our own, for strategies under which Keras 3's `Model.fit` fails.

Under MultiWorkerMirroredStrategy, Keras 3.15's `fit()` fails before its first step (its symbolic
build reduces a batch of per-replica tensors with MEAN; keras-team/keras#20585) and, past that,
in reducing the per-step logs. `fit` below is the same epoch loop with the parts that work under
every strategy: the model's own `train_step`/`test_step` run by `strategy.run` (the optimizer
sums the replicas' gradients), the model's metric variables (sums that every worker reads
together) for the logs, and Keras' `CallbackList`, so callbacks (checkpoints, early stopping,
TerminateOnNaN, the progress bar, TensorBoard) see the calls and logs `fit()` gives them.

Every worker must run the same number of steps and read the metrics at the same points: each
read of a metric is a collective operation. The input is sharded by data (`AutoShardPolicy.DATA`):
each worker runs the whole pipeline and keeps its part of every global batch, so the N workers'
batches of a step together are the global batch one device would see.
"""

import keras
import numpy as np
import tensorflow as tf

from skin_keras.core.errors import UserError, first_line


class ClusterLost(UserError):
    """Another worker stopped or could not be reached in the middle of training."""

    # TensorFlow's teardown of a cluster with a dead peer prints tracebacks from its pools.
    exit_at_once = True


# What a collective operation raises when a peer died or cannot be reached.
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.CancelledError,
                tf.errors.DeadlineExceededError, tf.errors.AbortedError)


def needs_custom_loop(strategy: tf.distribute.Strategy) -> bool:
    """True for the strategies `Model.fit` cannot run (multi-worker)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def with_class_weights(dataset: tf.data.Dataset, class_weight: dict | None) -> tf.data.Dataset:
    """(x, y) -> (x, y, weight of y's class), as `fit(class_weight=...)` weights samples; y is
    one-hot or soft (the class with the largest mass)."""
    if not class_weight:
        return dataset
    table = tf.constant([class_weight[i] for i in range(len(class_weight))], tf.float32)
    return dataset.map(lambda x, y: (x, y, tf.gather(table, tf.argmax(y, axis=-1))))


def _distribute(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def _step_function(model: keras.Model, step):
    strategy = model.distribute_strategy

    @tf.function
    def run(batch):
        strategy.run(step, args=(batch,))
        return model.get_metrics_result()  # Read in cross-replica context: summed over workers.
    return run


def fit(model: keras.Model, train: tf.data.Dataset, *, validation_data: tf.data.Dataset | None,
        epochs: int, initial_epoch: int = 0, callbacks=(), class_weight=None,
        verbose: int = 2) -> keras.callbacks.History:
    """Trains like `model.fit(train, validation_data=..., epochs=..., initial_epoch=...,
    callbacks=..., class_weight=..., verbose=..., shuffle=False)` under the model's strategy."""
    strategy = model.distribute_strategy
    train_batches = _distribute(strategy, with_class_weights(train, class_weight))
    val_batches = None if validation_data is None else _distribute(strategy, validation_data)
    callback_list = keras.callbacks.CallbackList(
        list(callbacks), add_history=True, add_progbar=verbose != 0, verbose=verbose,
        epochs=epochs, steps=None, model=model)
    train_step = _step_function(model, model.train_step)
    test_step = _step_function(model, model.test_step)

    model.stop_training = False
    callback_list.on_train_begin()
    try:
        epoch_logs = _epochs(model, train_batches, val_batches, train_step, test_step,
                             callback_list, range(initial_epoch, epochs))
    except _PEER_ERRORS as error:
        raise ClusterLost(f"another worker of the cluster stopped or cannot be reached "
                          f"({_reason(error)})") from None
    model.optimizer.finalize_variable_values(model.trainable_weights)
    callback_list.on_train_end(logs=epoch_logs)
    return model.history


def _epochs(model, train_batches, val_batches, train_step, test_step, callback_list, epochs
            ) -> dict | None:
    epoch_logs = None
    for epoch in epochs:
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for step, batch in enumerate(train_batches):
            callback_list.on_train_batch_begin(step)
            logs = train_step(batch)
            callback_list.on_train_batch_end(step, logs)
            if model.stop_training:  # TerminateOnNaN: every worker sees the same summed loss.
                break
        epoch_logs = _numbers(model.get_metrics_result())
        if val_batches is not None:
            callback_list.on_test_begin()
            model.reset_metrics()
            for step, batch in enumerate(val_batches):
                callback_list.on_test_batch_begin(step)
                callback_list.on_test_batch_end(step, test_step(batch))
            val_logs = _numbers(model.get_metrics_result())
            callback_list.on_test_end(val_logs)
            epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
        callback_list.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    return epoch_logs


def _reason(error: tf.errors.OpError) -> str:
    """The line of a collective's error that says what happened (its first line is "Graph
    execution error:")."""
    for line in str(error).splitlines():
        if "aborted by:" in line:
            return line.split("aborted by:", 1)[1].strip()
    return f"{type(error).__name__}: {first_line(error)}"


def _numbers(logs: dict) -> dict:
    """Flat {name: float}, as fit() gives callbacks (a metric whose result is a dict, like the
    confusion matrix's, contributes its entries)."""
    flat = {}
    for name, value in logs.items():
        flat.update(_numbers(value) if isinstance(value, dict)
                    else {name: float(np.asarray(value))})
    return flat

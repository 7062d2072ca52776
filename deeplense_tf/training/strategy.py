"""The tf.distribute strategy a run trains under, and what its workers must agree on.

One training loop serves the default strategy, `MirroredStrategy` and
`MultiWorkerMirroredStrategy` (Keras 3's `fit` fails under the last,
keras-team/keras#20585). Under several workers, the chief (task 0) writes the run
folder; decisions (early stopping, time budget, calibration scales) use values averaged
over workers (`Replicas.agree`), and non-trainable statistics (BatchNorm moving averages,
updated from each replica's own batches) are averaged after every epoch
(`StatisticsSync`), so all workers hold identical models.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from deeplense_tf.errors import ConfigError

# A MultiWorkerMirroredStrategy can be created only once per process (tests put a
# two-CPU MirroredStrategy here too).
_STRATEGY_CACHE: dict[str, tf.distribute.Strategy] = {}


def make_strategy(name: str) -> tf.distribute.Strategy:
    """`default`, `mirrored` (all local GPUs, or the CPU) or `multi_worker` (from TF_CONFIG).

    A MultiWorkerMirroredStrategy can only be created once per process, before
    TensorFlow runs anything; it is cached.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name in _STRATEGY_CACHE:
        return _STRATEGY_CACHE[name]
    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError(
                "training.strategy multi_worker needs the TF_CONFIG environment variable "
                '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}})'
            )
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as err:
            raise ConfigError(f"TF_CONFIG is not valid JSON ({err})") from None
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as err:
            raise ConfigError(
                "training.strategy multi_worker must be set up before TensorFlow runs "
                f"anything in this process; start training in a fresh process ({err})"
            ) from None
    else:
        raise ConfigError(f"unknown training.strategy {name!r}; choose default, mirrored or multi_worker")
    _STRATEGY_CACHE[name] = strategy
    return strategy


def is_multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy) -> bool:
    """Whether this process writes the run folder (always, but for multi-worker's non-chiefs)."""
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type in (None, "worker") and not has_chief and (task_id or 0) == 0


class Replicas:
    """The strategy of one training run: who writes, how many replicas, agreed values."""

    def __init__(self, name: str):
        # Created first: a MultiWorkerMirroredStrategy must exist before any TF op.
        self.strategy = make_strategy(name)
        self.multi_worker = is_multi_worker(self.strategy)
        self.chief = is_chief(self.strategy)
        self.count = self.strategy.num_replicas_in_sync
        self._agree_fn = None

    def log(self, message: str) -> None:
        """Print `message` once (on the chief)."""
        if self.chief:
            print(message, flush=True)

    def agree(self, values: dict) -> dict:
        """The mean over workers of each value (identical on every worker afterwards)."""
        if not self.multi_worker or not values:
            return values
        keys = sorted(values)
        if self._agree_fn is None:
            strategy = self.strategy

            @tf.function(input_signature=[tf.TensorSpec([None], tf.float64)])
            def agree_fn(vector):
                per_replica = strategy.run(tf.identity, args=(vector,))
                return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

            self._agree_fn = agree_fn
        mean = self._agree_fn(tf.constant([float(values[k]) for k in keys], tf.float64)).numpy()
        return dict(zip(keys, mean.tolist()))


def float_variables(variables) -> list:
    return [v for v in variables if v.dtype in ("float16", "float32", "float64", "bfloat16")]


class StatisticsSync:
    """Averages a model's non-trainable float variables (BatchNorm moving statistics) over
    all replicas. Each replica updates them from its own batches, so they drift apart;
    after a call every replica (and worker) holds the same values."""

    def __init__(self, replicas: Replicas, model):
        self.variables = float_variables(model.non_trainable_variables)
        self._fn = None
        if replicas.count > 1 and self.variables:
            variables, strategy = self.variables, replicas.strategy

            @tf.function
            def sync_fn():
                def replica_fn():  # reads each replica's own copy
                    return tf.concat(
                        [tf.reshape(tf.cast(tf.identity(v.value), tf.float32), [-1]) for v in variables], 0
                    )

                return strategy.reduce(tf.distribute.ReduceOp.MEAN, strategy.run(replica_fn), axis=None)

            self._fn = sync_fn

    def __call__(self) -> None:
        if self._fn is None:
            return
        flat = self._fn().numpy()
        offset = 0
        for variable in self.variables:
            size = int(np.prod(variable.shape))
            variable.assign(flat[offset : offset + size].reshape(variable.shape).astype(variable.dtype))
            offset += size

    def snapshot(self) -> list:
        """The current values (to put back with `restore`)."""
        return [v.numpy() for v in self.variables]

    def restore(self, values) -> None:
        for variable, value in zip(self.variables, values):
            variable.assign(value)

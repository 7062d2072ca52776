"""Regression heads and their losses.

Two heads, both in standardised target units (training standardises each target
with the train split's mean and std; export undoes it):

- `point`: one `Dense(1)` per target, output `[B, 1]`, trained with MSE or Huber.
- `gaussian`: one `Dense(2)` per target, output `[B, 2]` = (mean, log-variance),
  trained with the Gaussian negative log-likelihood `GaussianNLL`.

The log-variance is soft-clipped to `(-LOG_VAR_LIMIT, LOG_VAR_LIMIT)` by a scaled
tanh inside the model (`SoftClipLogVariance`): a standard deviation between
exp(-5) = 0.0067 and exp(5) = 148 target stds, wide enough for any real
prediction, and exp(-log_var) can no longer overflow or make the NLL's gradient
explode early in training. Heads and losses compute in float32 even under a
mixed-precision policy.

`SoftClipLogVariance` (like the ensemble's `GaussianMixtureCombine`, both
`LogVarianceOffsetLayer`s) also holds a non-trainable `log_variance_offset` (0 after
training), added to the log-variance. Post-hoc calibration
(`deeplense_tf.evaluation.calibration`) sets it to 2 log s, which scales every
predicted standard deviation by s; being a weight of the model, the scale travels
with `model.keras` into evaluation, ensembles, SavedModels and TFLite files.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from deeplense_tf.errors import ConfigError

HEADS = ("gaussian", "point")
POINT_LOSSES = ("mse", "huber")

#: log-variance bound (standardised units) for the Gaussian head and its loss.
LOG_VAR_LIMIT = 10.0

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class LogVarianceOffsetLayer(keras.layers.Layer):
    """Base of the layers that output `(mean, log-variance)`: holds the non-trainable
    `log_variance_offset` that post-hoc calibration sets (0 until then)."""

    def build(self, input_shape):
        self.log_variance_offset = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="log_variance_offset"
        )

    def load_own_variables(self, store):
        # Models saved before the offset existed have no variable here: keep it at 0.
        if len(store.keys()) == 0:
            return
        super().load_own_variables(store)


@keras.saving.register_keras_serializable(package="deeplense")
class SoftClipLogVariance(LogVarianceOffsetLayer):
    """`[B, 2]` (mean, raw) -> (mean, limit * tanh(raw / limit) + log_variance_offset).

    Identity near zero (slope 1 at raw = 0), smoothly bounded by +-`limit`, so the
    gradient never vanishes the way a hard clip's does.

    Args:
        limit: bound on the log-variance (standardised units, natural log).
    """

    def __init__(self, limit: float = LOG_VAR_LIMIT, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.limit = float(limit)

    def call(self, params):
        mean, raw = params[..., :1], params[..., 1:2]
        log_var = self.limit * tf.tanh(raw / self.limit) + self.log_variance_offset
        return tf.concat([mean, log_var], axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["limit"] = self.limit
        return config


@keras.saving.register_keras_serializable(package="deeplense")
class GaussianNLL(keras.losses.Loss):
    """Negative log-likelihood of `y_true` under N(mean, exp(log_var)), per example.

    `y_pred` is `[B, 2]` = (mean, log-variance), `y_true` is `[B, 1]` or `[B]`, both in
    standardised units. Per example:
    `0.5 * (log_var + (y - mean)^2 * exp(-log_var)) + 0.5 * log(2 pi)`,
    a true NLL (in nats), so its value matches the evaluation's mean NLL. The
    log-variance is hard-clipped to +-`log_var_limit` here as a last guard for
    outputs that did not come through `SoftClipLogVariance` (whose outputs lie
    strictly inside the range, so the clip never changes a model's loss). Always
    float32.

    Args:
        log_var_limit: bound on the log-variance.
    """

    def __init__(
        self,
        log_var_limit: float = LOG_VAR_LIMIT,
        name: str = "gaussian_nll",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype or "float32")
        self.log_var_limit = float(log_var_limit)

    def call(self, y_true, y_pred):
        y_true = tf.reshape(tf.cast(y_true, tf.float32), [-1])
        y_pred = tf.cast(y_pred, tf.float32)
        mean = y_pred[:, 0]
        log_var = tf.clip_by_value(y_pred[:, 1], -self.log_var_limit, self.log_var_limit)
        return 0.5 * (log_var + tf.square(y_true - mean) * tf.exp(-log_var)) + _HALF_LOG_2PI

    def get_config(self):
        return {
            "log_var_limit": self.log_var_limit,
            "name": self.name,
            "reduction": self.reduction,
            "dtype": "float32",
        }


@keras.saving.register_keras_serializable(package="deeplense")
def gaussian_mean_absolute_error(y_true, y_pred):
    """Mean absolute error of the Gaussian head's mean column, per example `[B]`."""
    y_true = tf.reshape(tf.cast(y_true, tf.float32), [-1])
    return tf.abs(y_true - tf.cast(y_pred[:, 0], tf.float32))


def split_gaussian(output):
    """Gaussian head output `[..., 2]` -> `(mean, std)`, each `[...]`.

    Works on NumPy arrays (returns NumPy) and on tensors (returns tensors). Units are
    those of the output (standardised unless de-normalised afterwards).
    """
    if isinstance(output, np.ndarray):
        return output[..., 0], np.exp(0.5 * output[..., 1])
    return output[..., 0], tf.exp(0.5 * output[..., 1])


def _check_head(head: str):
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; choose from {', '.join(HEADS)}")


def add_heads(features, head: str, targets) -> dict:
    """Attach one output per target to `features` `[B, D]`.

    Layer names: point head `Dense(1)` named `<target>`; Gaussian head `Dense(2)` named
    `head_<target>` followed by `SoftClipLogVariance` named `<target>`. Returns
    `{target: tensor}`.
    """
    _check_head(head)
    outputs = {}
    for target in targets:
        if head == "point":
            outputs[target] = keras.layers.Dense(1, dtype="float32", name=target)(features)
        else:
            params = keras.layers.Dense(2, dtype="float32", name=f"head_{target}")(features)
            outputs[target] = SoftClipLogVariance(name=target)(params)
    return outputs


def make_losses(head: str, targets, point_loss: str = "huber", huber_delta: float = 1.0) -> dict:
    """Loss per target for `model.compile(loss=...)`.

    Gaussian head: `GaussianNLL`; point head: `keras.losses.Huber(huber_delta)` or
    `keras.losses.MeanSquaredError` (`point_loss` "huber" | "mse"). `huber_delta` is in
    standardised units (1.0 = one target std).
    """
    _check_head(head)
    if head == "gaussian":
        return {target: GaussianNLL() for target in targets}
    if point_loss == "huber":
        return {target: keras.losses.Huber(delta=huber_delta) for target in targets}
    if point_loss == "mse":
        return {target: keras.losses.MeanSquaredError() for target in targets}
    raise ConfigError(f"unknown point_loss {point_loss!r}; choose from {', '.join(POINT_LOSSES)}")


def make_metrics(head: str, targets) -> dict:
    """Metrics per target for `model.compile(metrics=...)`: MAE of the (mean) prediction.

    Named "mae" for both heads, so the logged key is `<target>_mae` (`val_<target>_mae`),
    in standardised units.
    """
    _check_head(head)
    if head == "gaussian":
        return {
            t: [keras.metrics.MeanMetricWrapper(gaussian_mean_absolute_error, name="mae")]
            for t in targets
        }
    return {t: [keras.metrics.MeanAbsoluteError(name="mae")] for t in targets}

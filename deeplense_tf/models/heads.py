"""Regression heads and their losses.

Three heads, all in standardised target units (training standardises each target
with the train split's mean and std; export undoes it):

- `point`: one `Dense(1)` per target, output `[B, 1]`, trained with MSE or Huber.
- `gaussian`: one `Dense(2)` per target, output `[B, 2]` = (mean, log-variance),
  trained with the Gaussian negative log-likelihood `GaussianNLL`.
- `student_t`: one `Dense(3)` per target, output `[B, 3]` = (mean, log-variance,
  degrees of freedom), trained with `StudentTNLL`. The second column is the log of the
  t distribution's *variance* (not of its scale²), so the first two columns mean what
  they mean for the Gaussian head and everything that reads (mean, std) reads this head
  unchanged; df (in `(DF_MIN, DF_MAX)`, per example) only shapes the tails. A few large
  errors (the saturated heavy-mass end) then stop forcing one std scale to choose
  between the 68% and the 95% level. `deeplense_tf.predictive` holds the
  distribution maths (CDF, intervals, density) both heads share downstream.

The log-variance is soft-clipped to `(-LOG_VAR_LIMIT, LOG_VAR_LIMIT)` by a scaled
tanh inside the model (`SoftClipLogVariance`): a standard deviation between
exp(-5) = 0.0067 and exp(5) = 148 target stds, wide enough for any real
prediction, and exp(-log_var) can no longer overflow or make the NLL's gradient
explode early in training. Heads and losses compute in float32 even under a
mixed-precision policy.

`SoftClipLogVariance` and `StudentTOutput` (like the ensemble's `GaussianMixtureCombine`,
all `LogVarianceOffsetLayer`s) also hold a non-trainable `log_variance_offset` (0 after
training), added to the log-variance. Post-hoc calibration
(`deeplense_tf.models.calibration`) sets it to 2 log s, which scales every
predicted standard deviation by s; being a weight of the model, the scale travels
with `model.keras` into evaluation, ensembles, SavedModels and TFLite files.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from deeplense_tf.errors import ConfigError

# full_covariance: models/covariance.py (one Gaussian over all targets, built by the registry;
# its per-target outputs are [B, 2] (mean, log-variance) views like the Gaussian head's).
HEADS = ("gaussian", "student_t", "point", "softmax", "full_covariance")  # softmax: models/classification.py
#: Heads whose outputs are a predictive distribution (mean, log-variance, ...).
PROBABILISTIC_HEADS = ("gaussian", "student_t", "full_covariance")
POINT_LOSSES = ("mse", "huber")

#: Range of the Student-t head's degrees of freedom: above 2 so the variance (the
#: exported std) is finite, up to 100, where the t is a Gaussian for every level we report.
DF_MIN = 2.5
DF_MAX = 100.0

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


class _LogVarianceNLL(keras.losses.Loss):
    """What the Gaussian and Student-t NLLs share: the log-variance clip, float32, config."""

    def __init__(self, log_var_limit: float = LOG_VAR_LIMIT, name: str = "nll",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype or "float32")
        self.log_var_limit = float(log_var_limit)

    def get_config(self):
        return {
            "log_var_limit": self.log_var_limit,
            "name": self.name,
            "reduction": self.reduction,
            "dtype": "float32",
        }


@keras.saving.register_keras_serializable(package="deeplense")
class GaussianNLL(_LogVarianceNLL):
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

    def __init__(self, log_var_limit: float = LOG_VAR_LIMIT, name: str = "gaussian_nll",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(log_var_limit, name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        y_true = tf.reshape(tf.cast(y_true, tf.float32), [-1])
        y_pred = tf.cast(y_pred, tf.float32)
        mean = y_pred[:, 0]
        log_var = tf.clip_by_value(y_pred[:, 1], -self.log_var_limit, self.log_var_limit)
        return 0.5 * (log_var + tf.square(y_true - mean) * tf.exp(-log_var)) + _HALF_LOG_2PI


@keras.saving.register_keras_serializable(package="deeplense")
class StudentTOutput(LogVarianceOffsetLayer):
    """`[B, 3]` (mean, raw variance, raw df) -> (mean, log-variance, df).

    The log-variance is soft-clipped as in `SoftClipLogVariance` (plus the calibration
    offset); df = 2 + exp(u) with u a scaled tanh of the raw value spanning
    [log(df_min - 2), log(df_max - 2)], so df moves on a log scale (a change from 3 to 4
    matters as much as one from 30 to 60) and a raw 0 gives df = 9.

    Args:
        limit: bound on the log-variance (standardised units, natural log).
        df_min, df_max: range of the degrees of freedom (df_min > 2).
    """

    def __init__(self, limit: float = LOG_VAR_LIMIT, df_min: float = DF_MIN, df_max: float = DF_MAX,
                 **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not 2.0 < df_min < df_max:
            raise ConfigError(f"Student-t head: need 2 < df_min < df_max, got {df_min}, {df_max}")
        self.limit = float(limit)
        self.df_min = float(df_min)
        self.df_max = float(df_max)

    def call(self, params):
        mean, raw_var, raw_df = params[..., :1], params[..., 1:2], params[..., 2:3]
        log_var = self.limit * tf.tanh(raw_var / self.limit) + self.log_variance_offset
        lo, hi = math.log(self.df_min - 2.0), math.log(self.df_max - 2.0)
        centre, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
        df = 2.0 + tf.exp(centre + half * tf.tanh(raw_df / half))
        return tf.concat([mean, log_var, df], axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(limit=self.limit, df_min=self.df_min, df_max=self.df_max)
        return config


@keras.saving.register_keras_serializable(package="deeplense")
class StudentTNLL(_LogVarianceNLL):
    """Negative log-likelihood of `y_true` under the Student-t of `y_pred`, per example.

    `y_pred` is `[B, 3]` = (mean, log-variance, df) in standardised units (df > 2);
    the t's scale is `sqrt(exp(log_var) * (df - 2) / df)`. Per example, with
    z = (y - mean) / scale:
    `-lgamma((df+1)/2) + lgamma(df/2) + 0.5 log(df pi) + log(scale) + (df+1)/2 log(1 + z²/df)`
    (nats; equal to `predictive.Predictive(...).logpdf`'s negative). The log-variance is
    hard-clipped as in `GaussianNLL`. Always float32.
    """

    def __init__(self, log_var_limit: float = LOG_VAR_LIMIT, name: str = "student_t_nll",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(log_var_limit, name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        y_true = tf.reshape(tf.cast(y_true, tf.float32), [-1])
        y_pred = tf.cast(y_pred, tf.float32)
        mean = y_pred[:, 0]
        log_var = tf.clip_by_value(y_pred[:, 1], -self.log_var_limit, self.log_var_limit)
        df = tf.maximum(y_pred[:, 2], 2.0 + 1e-3)
        log_scale = 0.5 * (log_var + tf.math.log((df - 2.0) / df))
        z2 = tf.square(y_true - mean) * tf.exp(-2.0 * log_scale)
        return (
            tf.math.lgamma(0.5 * df) - tf.math.lgamma(0.5 * (df + 1.0))
            + 0.5 * tf.math.log(df * math.pi) + log_scale
            + 0.5 * (df + 1.0) * tf.math.log1p(z2 / df)
        )


@keras.saving.register_keras_serializable(package="deeplense")
def gaussian_mean_absolute_error(y_true, y_pred):
    """Mean absolute error of the mean column (Gaussian or Student-t head), per example `[B]`."""
    y_true = tf.reshape(tf.cast(y_true, tf.float32), [-1])
    return tf.abs(y_true - tf.cast(y_pred[:, 0], tf.float32))


def split_gaussian(output):
    """Gaussian (or Student-t) head output `[..., 2 or 3]` -> `(mean, std)`, each `[...]`.

    Works on NumPy arrays (returns NumPy) and on tensors (returns tensors). Units are
    those of the output (standardised unless de-normalised afterwards).
    """
    if isinstance(output, np.ndarray):
        return output[..., 0], np.exp(0.5 * output[..., 1])
    return output[..., 0], tf.exp(0.5 * output[..., 1])


def _check_head(head: str):
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; choose from {', '.join(HEADS)}")


def add_heads(features, head: str, targets, num_classes: int | None = None) -> dict:
    """Attach one output per target to `features` `[B, D]`.

    Layer names: point head `Dense(1)` named `<target>`; Gaussian head `Dense(2)` named
    `head_<target>` followed by `SoftClipLogVariance` named `<target>`; Student-t head
    `Dense(3)` named `head_<target>` followed by `StudentTOutput` named `<target>`.
    Returns `{target: tensor}`. The softmax head (`num_classes` classes) is the classifier's
    one output, `classification.add_softmax_head`.
    """
    _check_head(head)
    if head == "softmax":
        from deeplense_tf.models.classification import add_softmax_head

        return add_softmax_head(features, num_classes)
    if head == "full_covariance":  # covariance.py imports this module: the registry builds it
        raise ConfigError("the full_covariance head is one joint output: covariance.add_full_covariance_head")
    outputs = {}
    for target in targets:
        if head == "point":
            outputs[target] = keras.layers.Dense(1, dtype="float32", name=target)(features)
        elif head == "student_t":
            params = keras.layers.Dense(3, dtype="float32", name=f"head_{target}")(features)
            outputs[target] = StudentTOutput(name=target)(params)
        else:
            params = keras.layers.Dense(2, dtype="float32", name=f"head_{target}")(features)
            outputs[target] = SoftClipLogVariance(name=target)(params)
    return outputs


def make_losses(head: str, targets, point_loss: str = "huber", huber_delta: float = 1.0) -> dict:
    """Loss per target for `model.compile(loss=...)`.

    Gaussian head: `GaussianNLL`; Student-t head: `StudentTNLL`; point head: `keras.losses.Huber(huber_delta)` or
    `keras.losses.MeanSquaredError` (`point_loss` "huber" | "mse"). `huber_delta` is in
    standardised units (1.0 = one target std).
    """
    _check_head(head)
    if head == "softmax":
        from deeplense_tf.models.classification import ClassCrossEntropy

        return {target: ClassCrossEntropy() for target in targets}
    if head == "full_covariance":
        raise ConfigError("the full_covariance head has one joint loss: covariance.make_losses")
    if head == "gaussian":
        return {target: GaussianNLL() for target in targets}
    if head == "student_t":
        return {target: StudentTNLL() for target in targets}
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
    if head == "softmax":
        from deeplense_tf.models.classification import class_accuracy

        return {t: [keras.metrics.MeanMetricWrapper(class_accuracy, name="accuracy")] for t in targets}
    if head in PROBABILISTIC_HEADS:
        return {
            t: [keras.metrics.MeanMetricWrapper(gaussian_mean_absolute_error, name="mae")]
            for t in targets
        }
    return {t: [keras.metrics.MeanAbsoluteError(name="mae")] for t in targets}


def output_width(head: str) -> int:
    """Columns per target of a head's output: point 1, Gaussian 2, Student-t 3, the
    full-covariance head's per-target views 2."""
    _check_head(head)
    return {"point": 1, "gaussian": 2, "student_t": 3, "full_covariance": 2}[head]

"""The full-covariance head: one Gaussian over all targets, with their correlations.

`model.head: full_covariance` ends the network in one joint output instead of one
independent Gaussian per target:

- `head_posterior`: `Dense(T + T(T+1)/2)` on the embedding (T targets): the mean vector
  and the raw entries of the lower triangle of a Cholesky factor, row by row.
- `posterior` (`CholeskyGaussianOutput`): `[B, T, T+1]`, column 0 the mean vector,
  columns 1..T the lower-triangular Cholesky factor `L` of the covariance `Σ = L Lᵀ`,
  in standardised target units. `L = diag(σ) C`: the marginal stds σ (each soft-clipped
  to the Gaussian head's range, exp(-5)..exp(5) target stds) times the Cholesky factor C
  of a correlation matrix (unit rows with a positive diagonal, every pair's |ρ| < 0.9988).
  `Σ` is positive definite by construction, every entry is finite for any input, and the
  factor's bounded condition keeps the NLL's triangular solve finite in float32.
- `<target>` (`MarginalGaussian`), one per target: `[B, 2]` = (mean, log-variance) of
  that target's marginal, `log Σ_ii`. These are the per-target views.

Why one joint output plus per-target views: everything that reads a run per target
(the loop's MAE, `Run.predict`, evaluation's coverage, MAE and R², the SavedModel's
`<target>` / `<target>_std`, TTA of the marginals) reads the views exactly like a
Gaussian head's `[B, 2]` outputs, unchanged; only what needs the correlations reads
`posterior` (`JOINT_OUTPUT`): the loss, the joint calibration, the Mahalanobis metrics
and the exported covariance. The views are computed from the joint output inside the
graph, so they can never disagree with it.

Calibration: one scale `c` on the covariance, `Σ -> c Σ`, stored as the `posterior`
layer's non-trainable `log_variance_offset = log c` (the factor is multiplied by
`sqrt(c)`; the views follow). `fit_covariance_scale` chooses `c` on the validation split
so that the squared Mahalanobis distance `d² = (y - μ)ᵀ Σ⁻¹ (y - μ)`, chi-square with T
degrees of freedom for a calibrated model, has nominal coverage: the fraction with
`d² / c <= χ²_T(p)` matches p over `CALIBRATION_LEVELS`.

D4: a rotated or mirrored image changes the vector and spin-2 targets by a signed
permutation `P` (`d4_target_matrix`, derived from `data.augment.transform_targets`, the
labels' one definition), so the prediction for the transformed image should be
`(P μ, P Σ Pᵀ)` in physical units; `JointGaussian.transformed` applies it, and TTA maps
each view back with the inverse element.

`JointGaussian` is the NumPy side (physical or standardised units): covariance, stds,
correlation, Mahalanobis distance, log density, the chi-square coverage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from scipy import stats

from deeplense_tf.errors import ConfigError, RunError
from deeplense_tf.intervals import CALIBRATION_LEVELS
from deeplense_tf.models.calibration import search_scale
from deeplense_tf.models.heads import (
    LOG_VAR_LIMIT,
    LogVarianceOffsetLayer,
    gaussian_mean_absolute_error,
)

HEAD = "full_covariance"
#: Name of the joint output (and of its layer); a reserved name no target may take.
JOINT_OUTPUT = "posterior"
JOINT_DENSE = f"head_{JOINT_OUTPUT}"

#: Levels the joint calibration reports (fraction of lenses with d² <= χ²_T(level)).
JOINT_LEVELS = (0.68, 0.95)

_LOG_2PI = math.log(2.0 * math.pi)


def cholesky_size(size: int) -> int:
    """Entries of a lower triangle of a `size` x `size` matrix."""
    return size * (size + 1) // 2


#: Bound on the raw off-diagonal entries of the correlation factor's rows (their diagonal
#: entry is 1): a pair's |correlation| stays below r / sqrt(1 + r²) = 0.9988, so the
#: factor's condition number is bounded and the NLL's triangular solve stays finite in float32.
CORRELATION_RAW_LIMIT = math.exp(3.0)


def _gather_index(size: int) -> np.ndarray:
    """`[size * size]` indices into (the strictly lower entries row by row, a 0, a 1)."""
    strict = size * (size - 1) // 2
    index = np.full((size, size), strict, np.int32)  # above the diagonal: the 0
    rows, cols = np.tril_indices(size, -1)
    index[rows, cols] = np.arange(strict)
    index[np.arange(size), np.arange(size)] = strict + 1  # the diagonal: the 1
    return index.reshape(-1)


@keras.saving.register_keras_serializable(package="deeplense")
class CholeskyGaussianOutput(LogVarianceOffsetLayer):
    """`[B, T + T(T+1)/2]` raw -> `[B, T, T+1]` = (mean vector, Cholesky factor L of Σ).

    The raw vector is (means [T], log-stds [T], the correlation factor's strictly lower
    entries [T(T-1)/2] row by row). `L = diag(σ) C`: σ_i = exp of the log-std soft-clipped
    to ±limit/2 (the Gaussian head's std range), so σ_i is target i's marginal std;
    C is lower triangular with rows of unit length, each the raw row (soft-clipped to
    ±`CORRELATION_RAW_LIMIT`, 1 on the diagonal) divided by its norm, so C Cᵀ is a
    correlation matrix and L has a positive diagonal: Σ is positive definite.

    Args:
        size: the number of targets T.
        limit: bound on each log-variance (standardised units, natural log).
    """

    def __init__(self, size: int, limit: float = LOG_VAR_LIMIT, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"full-covariance head: size must be a positive number of targets, got {size!r}")
        self.size = size
        self.limit = float(limit)

    def call(self, raw):
        size = self.size
        raw = tf.cast(raw, tf.float32)
        mean, log_std, entries = raw[:, :size], raw[:, size : 2 * size], raw[:, 2 * size :]
        half = 0.5 * self.limit
        log_std = half * tf.tanh(log_std / half) + 0.5 * self.log_variance_offset
        bound = CORRELATION_RAW_LIMIT
        entries = bound * tf.tanh(entries / bound)
        # A gather (a TFLite builtin) lays the rows out as a square matrix.
        padded = tf.concat([entries, tf.zeros_like(mean[:, :1]), tf.ones_like(mean[:, :1])], axis=1)
        rows = tf.reshape(tf.gather(padded, _gather_index(size), axis=1), [-1, size, size])
        unit = rows * tf.math.rsqrt(tf.reduce_sum(tf.square(rows), axis=-1, keepdims=True))
        factor = tf.exp(log_std)[:, :, tf.newaxis] * unit
        return tf.concat([mean[..., tf.newaxis], factor], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size + 1)

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, limit=self.limit)
        return config


@keras.saving.register_keras_serializable(package="deeplense")
class MarginalGaussian(keras.layers.Layer):
    """`[B, T, T+1]` joint output -> `[B, 2]` = (mean, log Σ_ii) of target `index`."""

    def __init__(self, index: int, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.index = int(index)

    def call(self, joint):
        row = joint[:, self.index, :]
        variance = tf.reduce_sum(tf.square(row[:, 1:]), axis=-1, keepdims=True)
        return tf.concat([row[:, :1], tf.math.log(variance)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2)

    def get_config(self):
        config = super().get_config()
        config["index"] = self.index
        return config


def add_full_covariance_head(features, targets) -> dict:
    """`{JOINT_OUTPUT: [B, T, T+1], target: [B, 2] ...}` on `features` `[B, D]` (layer names
    in the module docstring)."""
    targets = list(targets)
    size = len(targets)
    raw = keras.layers.Dense(size + cholesky_size(size), dtype="float32", name=JOINT_DENSE)(features)
    joint = CholeskyGaussianOutput(size, name=JOINT_OUTPUT)(raw)
    outputs = {JOINT_OUTPUT: joint}
    for index, target in enumerate(targets):
        outputs[target] = MarginalGaussian(index, name=target)(joint)
    return outputs


def stack_targets(values: dict, targets) -> tf.Tensor:
    """`{target: [B] or [B, 1]}` -> `[B, T]` float32 in `targets` order."""
    return tf.concat([tf.reshape(tf.cast(values[t], tf.float32), [-1, 1]) for t in targets], axis=1)


@keras.saving.register_keras_serializable(package="deeplense")
class MultivariateGaussianNLL(keras.losses.Loss):
    """Negative log-likelihood of the target vector under N(μ, L Lᵀ), per example (nats).

    `y_true`: `{target: [B, 1]}` (the pipeline's batch) or `[B, T]`; `y_pred`: the joint
    output `[B, T, T+1]`, standardised units. Per example, with `z = L⁻¹ (y - μ)`:
    `0.5 |z|² + Σ_i log L_ii + 0.5 T log(2π)`, the sum of the per-target Gaussian NLLs
    when Σ is diagonal. Always float32.

    Args:
        targets: target names, in the joint output's order.
    """

    def __init__(self, targets, name: str = "multivariate_gaussian_nll",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype or "float32")
        self.targets = list(targets)

    def call(self, y_true, y_pred):
        y = stack_targets(y_true, self.targets) if isinstance(y_true, dict) else tf.cast(y_true, tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)
        mean, factor = y_pred[:, :, 0], y_pred[:, :, 1:]
        z = tf.linalg.triangular_solve(factor, (y - mean)[..., tf.newaxis], lower=True)[..., 0]
        log_det_half = tf.reduce_sum(tf.math.log(tf.linalg.diag_part(factor)), axis=-1)
        return 0.5 * tf.reduce_sum(tf.square(z), axis=-1) + log_det_half + 0.5 * len(self.targets) * _LOG_2PI

    def get_config(self):
        return {"targets": self.targets, "name": self.name, "reduction": self.reduction, "dtype": "float32"}


def make_losses(targets) -> dict:
    """`{JOINT_OUTPUT: MultivariateGaussianNLL(targets)}`: the one loss of the head."""
    return {JOINT_OUTPUT: MultivariateGaussianNLL(targets)}


def make_metrics(targets) -> dict:
    """MAE of each marginal's mean (`<target>_mae`), as for the Gaussian head."""
    return {t: [keras.metrics.MeanMetricWrapper(gaussian_mean_absolute_error, name="mae")] for t in targets}


#: Names of the exported joint outputs (`[B, T, T]`, rows and columns in target order).
COVARIANCE_OUTPUT = "covariance"
CORRELATION_OUTPUT = "correlation"


def physical_joint_outputs(joint, target_std) -> dict:
    """The joint output `[B, T, T+1]` (standardised) -> `{COVARIANCE_OUTPUT: [B, T, T]}` in
    physical units (`S Σ S`, S the targets' train-split stds `[T]`) and
    `{CORRELATION_OUTPUT: [B, T, T]}` (unit-free); TensorFlow, for exported graphs."""
    joint = tf.cast(joint, tf.float32)
    factor = joint[:, :, 1:]
    standardised = tf.matmul(factor, factor, transpose_b=True)
    std = tf.constant(np.asarray(target_std, np.float32))
    # Σ_ii is row i of L squared and summed (no matrix_diag_part: not a TFLite builtin).
    inverse = tf.math.rsqrt(tf.reduce_sum(tf.square(factor), axis=-1))
    return {
        COVARIANCE_OUTPUT: standardised * std[:, None] * std[None, :],
        CORRELATION_OUTPUT: standardised * inverse[:, :, None] * inverse[:, None, :],
    }


def physical_joint_outputs_np(joint, target_std) -> dict:
    """NumPy (float64) twin of `physical_joint_outputs`."""
    dist = JointGaussian.from_joint_output(joint)
    std = np.asarray(target_std, np.float64)
    return {COVARIANCE_OUTPUT: dist.covariance * std[:, None] * std[None, :],
            CORRELATION_OUTPUT: dist.correlation()}


# --- NumPy: the joint predictive distribution ------------------------------------------------


def _batched(array, ndim: int, name: str) -> np.ndarray:
    array = np.asarray(array, np.float64)
    if array.ndim == ndim - 1:
        array = array[np.newaxis]
    if array.ndim != ndim:
        raise ValueError(f"{name} has shape {array.shape}")
    return array


@dataclass(frozen=True)
class JointGaussian:
    """N(mean, covariance) per example, over T targets (any consistent units).

    Attributes:
        mean: `[N, T]`.
        covariance: `[N, T, T]`, symmetric positive definite.
    """

    mean: np.ndarray
    covariance: np.ndarray

    def __post_init__(self):
        mean = _batched(self.mean, 2, "mean")
        cov = _batched(self.covariance, 3, "covariance")
        if cov.shape != (*mean.shape, mean.shape[1]):
            raise ValueError(f"covariance has shape {cov.shape}, mean {mean.shape}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "covariance", cov)

    @classmethod
    def from_joint_output(cls, joint) -> JointGaussian:
        """From the `posterior` output `[N, T, T+1]` (standardised units)."""
        joint = np.asarray(joint, np.float64)
        factor = joint[:, :, 1:]
        return cls(joint[:, :, 0], factor @ np.swapaxes(factor, 1, 2))

    def __len__(self) -> int:
        return self.mean.shape[0]

    @property
    def size(self) -> int:
        return self.mean.shape[1]

    def stds(self) -> np.ndarray:
        """`[N, T]` marginal standard deviations."""
        return np.sqrt(np.diagonal(self.covariance, axis1=1, axis2=2))

    def correlation(self) -> np.ndarray:
        """`[N, T, T]` correlation matrices (ones on the diagonal)."""
        std = self.stds()
        return self.covariance / (std[:, :, None] * std[:, None, :])

    def subset(self, index) -> JointGaussian:
        return JointGaussian(self.mean[index], self.covariance[index])

    def with_scale(self, scale) -> JointGaussian:
        """Covariance multiplied by `scale` (> 0): what calibration does to the model."""
        return JointGaussian(self.mean, self.covariance * float(scale))

    def affine(self, scale, shift) -> JointGaussian:
        """Of `y * scale + shift` per target (`[T]` each): standardised -> physical units."""
        scale, shift = np.asarray(scale, np.float64), np.asarray(shift, np.float64)
        return JointGaussian(self.mean * scale + shift, self.covariance * scale[:, None] * scale[None, :])

    def transformed(self, matrix) -> JointGaussian:
        """Of `P y` for a `[T, T]` matrix `P` (a D4 element, `d4_target_matrix`): (P μ, P Σ Pᵀ)."""
        matrix = np.asarray(matrix, np.float64)
        return JointGaussian(self.mean @ matrix.T, matrix @ self.covariance @ matrix.T)

    def mahalanobis2(self, y) -> np.ndarray:
        """`[N]` squared Mahalanobis distances of `y` `[N, T]`."""
        diff = np.asarray(y, np.float64).reshape(self.mean.shape) - self.mean
        factor = np.linalg.cholesky(self.covariance)
        z = np.linalg.solve(factor, diff[..., None])[..., 0]
        return np.sum(np.square(z), axis=-1)

    def logpdf(self, y) -> np.ndarray:
        """`[N]` log densities of `y` `[N, T]` (nats)."""
        factor = np.linalg.cholesky(self.covariance)
        log_det_half = np.sum(np.log(np.diagonal(factor, axis1=1, axis2=2)), axis=-1)
        return -0.5 * self.mahalanobis2(y) - log_det_half - 0.5 * self.size * _LOG_2PI

    def joint_coverage(self, y, levels=JOINT_LEVELS) -> np.ndarray:
        """Fraction of examples with `d² <= χ²_T(level)`, for each level (nominal: the level)."""
        d2 = self.mahalanobis2(y)
        return np.array([float(np.mean(d2 <= stats.chi2.ppf(level, self.size))) for level in levels])

    @classmethod
    def moment_matched(cls, components: list[JointGaussian]) -> JointGaussian:
        """The Gaussian with the mean and covariance of an equal-weight mixture (TTA views):
        mean of the means; mean of the covariances plus the covariance of the means."""
        means = np.stack([c.mean for c in components])  # [K, N, T]
        mean = means.mean(axis=0)
        spread = means - mean
        between = np.einsum("kni,knj->nij", spread, spread) / len(components)
        return cls(mean, np.mean([c.covariance for c in components], axis=0) + between)


def _joint_calibration_error(d2: np.ndarray, size: int, scale: float, levels) -> float:
    observed = stats.chi2.cdf(d2 / scale, size)
    return float(np.mean([abs(float(np.mean(observed <= level)) - level) for level in levels]))


def fit_covariance_scale(y, joint: JointGaussian, levels=CALIBRATION_LEVELS) -> dict:
    """The scale c on the covariance that best matches the nominal chi-square coverage.

    `y` `[N, T]` truths and `joint` the predictions, in the same units (standardised in
    training: the scale is unit-free). Coverage at level p is the fraction with
    `d² / c <= χ²_T(p)`; c minimises the mean |observed - nominal| over `levels` (161
    log-spaced scales over 0.01..100, 1.0 among them, then 101 around the best; among
    equally good scales the one nearest 1). Rows with a non-finite truth are left out.

    Returns `{"scale", "examples", "targets", "calibration_error_before",
    "calibration_error_after", "joint_coverage_68_before", "joint_coverage_68_after",
    "joint_coverage_95_before", "joint_coverage_95_after", "mean_d2_before"}`
    (`mean_d2_before / T` is the moment estimate of c). RunError when no row is usable.
    """
    y = np.asarray(y, np.float64).reshape(joint.mean.shape)
    usable = np.isfinite(y).all(axis=1) & np.isfinite(joint.mean).all(axis=1)
    if not usable.any():
        raise RunError("covariance calibration: no example with finite truths and predictions")
    dist = joint.subset(usable)
    d2 = dist.mahalanobis2(y[usable])
    size = dist.size

    def error(scale):
        return _joint_calibration_error(d2, size, scale, levels)

    scale = search_scale(error, 0.01, 100.0)

    def coverage(level, c):
        return float(np.mean(d2 / c <= stats.chi2.ppf(level, size)))

    return {
        "scale": scale,
        "examples": int(usable.sum()),
        "targets": size,
        "calibration_error_before": error(1.0),
        "calibration_error_after": error(scale),
        "joint_coverage_68_before": coverage(0.68, 1.0),
        "joint_coverage_68_after": coverage(0.68, scale),
        "joint_coverage_95_before": coverage(0.95, 1.0),
        "joint_coverage_95_after": coverage(0.95, scale),
        "mean_d2_before": float(np.mean(d2)),
    }


def apply_covariance_scale(model, scale: float) -> None:
    """Multiply the covariance `model` predicts by `scale` (every std by sqrt(scale))."""
    try:
        layer = model.get_layer(JOINT_OUTPUT)
    except ValueError:
        layer = None
    if not isinstance(layer, CholeskyGaussianOutput):
        raise RunError(f"covariance calibration needs the full-covariance head's {JOINT_OUTPUT!r} layer")
    if not (math.isfinite(scale) and scale > 0):
        raise RunError(f"covariance calibration: scale must be a positive number, got {scale}")
    layer.log_variance_offset.assign_add(math.log(scale))


# --- D4 -----------------------------------------------------------------------------------


def d4_target_matrix(element: str, targets, target_kinds: dict) -> np.ndarray:
    """`[T, T]` matrix P with `P y` = the targets `y` (physical units) after `element`
    acts on the image.

    Built column by column from `data.augment.transform_targets` on unit vectors, so it
    is the labels' own transform (identity on scalars, a signed permutation on each
    vector or spin-2 pair). DataError for a pair with one component among `targets`.
    """
    from deeplense_tf.data import augment

    targets = list(targets)
    kinds = {t: target_kinds[t] for t in targets if t in target_kinds}
    matrix = np.zeros((len(targets), len(targets)))
    for j, name in enumerate(targets):
        unit = {t: np.array(1.0 if t == name else 0.0) for t in targets}
        moved = augment.transform_targets(unit, element, kinds)
        matrix[:, j] = [float(moved[t]) for t in targets]
    return matrix


def to_physical(joint: JointGaussian, targets, target_stats: dict) -> JointGaussian:
    """Standardised -> physical units with `target_stats` (`{target: {"mean", "std"}}`)."""
    std = np.array([target_stats[t]["std"] for t in targets], np.float64)
    mean = np.array([target_stats[t]["mean"] for t in targets], np.float64)
    return joint.affine(std, mean)


def predict_joint(forward, images, targets, target_stats: dict, *, batch_size: int = 256,
                  tta: bool = False, target_kinds: dict | None = None):
    """The joint prediction of `images` in physical units.

    `forward(batch) -> model outputs` (inference mode). Without `tta`: a `JointGaussian`.
    With `tta`: `(moment-matched JointGaussian, [8 JointGaussian])`, each view's
    prediction mapped back to the original frame with the inverse element's matrix.
    """
    from deeplense_tf.data import augment

    def once(batch_images):
        chunks = [np.asarray(forward(batch_images[s : s + batch_size])[JOINT_OUTPUT], np.float64)
                  for s in range(0, len(batch_images), batch_size)]
        size = len(targets)
        raw = np.concatenate(chunks) if chunks else np.zeros((0, size, size + 1))
        return to_physical(JointGaussian.from_joint_output(raw), targets, target_stats)

    if not tta:
        return once(images)
    views = []
    for element in augment.D4_ELEMENTS:
        back = d4_target_matrix(augment.inverse(element), targets, target_kinds or {})
        views.append(once(augment.transform_image(images, element)).transformed(back))
    return JointGaussian.moment_matched(views), views

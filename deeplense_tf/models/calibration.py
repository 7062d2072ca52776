"""Post-hoc calibration of the predicted standard deviations: fit and apply a scale.

`fit_predictive_scale` fits the scale on the distribution the model deploys (Gaussian,
Student-t, or the TTA mixture of eight views); `fit_variance_scale` is the Gaussian
case on (mean, std) arrays.

A network trained with the Gaussian NLL on augmented batches in training mode tends to
predict standard deviations of the right shape but the wrong scale for unseen images
(the first benchmark ResNet's 68% intervals held 78% of the test images). One scalar
per target fixes the scale: `s` minimises the mean absolute gap between nominal and
observed coverage over `CALIBRATION_LEVELS` on the validation split (recalibration
restricted to a variance scale, so the prediction stays Gaussian). The test split is
never looked at.

The scale lives in the model: the output layer's `log_variance_offset += 2 log s`
(`SoftClipLogVariance`, or an ensemble's `GaussianMixtureCombine`), so evaluation,
ensembles, SavedModels and TFLite files all carry it. This module sits next to the head
it adjusts, below training (which calibrates at the end of a run,
`training.calibrate_variance`) and evaluation (`deeplense calibrate --run RUN` does the
same for a finished run; calibrating twice composes, the second scale comes out near 1).
"""

from __future__ import annotations

import math

import numpy as np

from deeplense_tf.errors import RunError
from deeplense_tf.intervals import CALIBRATION_LEVELS, z_for_level
from deeplense_tf.models.heads import LogVarianceOffsetLayer
from deeplense_tf.predictive import Predictive

# Scales searched, log-spaced; 1.0 is on the grid, so calibration never makes the
# validation coverage worse.
_SCALES = np.exp(np.linspace(math.log(0.1), math.log(10.0), 801))


def _calibration_error(abs_z: np.ndarray, scale: float, levels) -> float:
    gaps = [abs(float(np.mean(abs_z <= scale * z_for_level(p))) - p) for p in levels]
    return float(np.mean(gaps))


def search_scale(error, low: float, high: float) -> float:
    """The scale in [low, high] that minimises `error(scale)`: 161 log-spaced scales
    (1.0 among them when the range is symmetric in log), then 101 around the best; among
    equally good scales, the one nearest 1 (no change unless the data ask for one)."""
    coarse = np.exp(np.linspace(math.log(low), math.log(high), 161))
    errors = np.array([error(s) for s in coarse])
    step = math.log(coarse[1] / coarse[0])
    centre = math.log(coarse[int(np.argmin(errors))])
    fine = np.exp(np.linspace(centre - step, centre + step, 101))
    scales = np.concatenate([coarse, fine])
    errors = np.concatenate([errors, [error(s) for s in fine]])
    candidates = scales[errors <= errors.min() + 1e-12]
    return float(candidates[np.argmin(np.abs(np.log(candidates)))])


def fit_variance_scale(y_true, y_pred, y_std, levels=CALIBRATION_LEVELS) -> dict:
    """The std scale that best matches nominal coverage on `(y_true, y_pred, y_std)`.

    Examples with a non-finite truth, prediction or std are left out. Returns
    `{"scale", "examples", "calibration_error_before", "calibration_error_after",
    "coverage_68_before", "coverage_68_after"}` (error = mean |observed - nominal|
    over `levels`). Raises `RunError` when no example is usable.
    """
    y_true, y_pred, y_std = (np.asarray(a, np.float64).reshape(-1) for a in (y_true, y_pred, y_std))
    usable = np.isfinite(y_true) & np.isfinite(y_pred) & np.isfinite(y_std) & (y_std > 0)
    if not usable.any():
        raise RunError("variance calibration: no example with a finite truth, mean and std")
    abs_z = np.abs(y_true[usable] - y_pred[usable]) / y_std[usable]
    errors = np.array([_calibration_error(abs_z, s, levels) for s in _SCALES])
    # Among equally good scales, the one closest to 1 (the smallest change).
    best = errors.min()
    candidates = _SCALES[errors <= best + 1e-12]
    scale = float(candidates[np.argmin(np.abs(np.log(candidates)))])
    z68 = z_for_level(0.68)
    return {
        "scale": scale,
        "examples": int(usable.sum()),
        "calibration_error_before": _calibration_error(abs_z, 1.0, levels),
        "calibration_error_after": _calibration_error(abs_z, scale, levels),
        "coverage_68_before": float(np.mean(abs_z <= z68)),
        "coverage_68_after": float(np.mean(abs_z <= scale * z68)),
    }


def apply_variance_scale(model, target: str, scale: float) -> None:
    """Multiply the standard deviations `model` predicts for `target` by `scale`."""
    try:
        layer = model.get_layer(target)
    except ValueError:
        layer = None
    if not isinstance(layer, LogVarianceOffsetLayer):
        kind = type(layer).__name__ if layer is not None else "no layer"
        raise RunError(
            f"variance calibration needs a probabilistic output layer named {target!r} "
            f"(SoftClipLogVariance, StudentTOutput or GaussianMixtureCombine); the model has {kind} there"
        )
    if not (math.isfinite(scale) and scale > 0):
        raise RunError(f"variance calibration: scale must be a positive number, got {scale}")
    layer.log_variance_offset.assign_add(2.0 * math.log(scale))


def _coverage_gaps(y_true, predictive: Predictive, scale: float, levels) -> np.ndarray:
    observed = predictive.with_scale(scale).central_coverage(y_true, levels)
    return np.abs(observed - np.asarray(levels, np.float64))


def fit_predictive_scale(y_true, predictive: Predictive, levels=CALIBRATION_LEVELS) -> dict:
    """The std scale that best matches nominal coverage of the distribution `predictive`.

    `predictive` is what the model deploys (`deeplense_tf.predictive.Predictive`:
    Gaussian, Student-t, or the eight-view TTA mixture); the scale multiplies every
    component's std, exactly what `apply_variance_scale` does to the model, so the fit
    is of the deployed distribution, with or without TTA. Coverage is exact for each
    family (`|2 F(y) - 1| <= p`). Search: 161 log-spaced scales over 0.1..10 (1.0
    among them), then 101 around the best; among equally good scales, the one nearest 1.

    Returns `{"scale", "examples", "family", "components", "calibration_error_before",
    "calibration_error_after"` (mean |observed - nominal| over `levels`),
    `"max_deviation_before", "max_deviation_after"` (largest, over 5%..95%),
    `"coverage_68_before", "coverage_68_after", "coverage_95_before", "coverage_95_after"}`.
    Examples with a non-finite truth are left out; RunError when none is left.
    """
    y_true = np.asarray(y_true, np.float64).reshape(-1)
    usable = np.isfinite(y_true) & np.isfinite(predictive.moments()[0])
    if not usable.any():
        raise RunError("variance calibration: no example with a finite truth and prediction")
    y, dist = y_true[usable], predictive.subset(usable)

    def error(scale):
        return float(np.mean(_coverage_gaps(y, dist, scale, levels)))

    scale = search_scale(error, 0.1, 10.0)
    curve = [level for level in levels if level <= 0.95 + 1e-9]
    marks = (0.68, 0.95)
    before = dist.central_coverage(y, marks)
    after = dist.with_scale(scale).central_coverage(y, marks)
    return {
        "scale": scale,
        "examples": int(usable.sum()),
        "family": dist.family,
        "components": dist.components,
        "calibration_error_before": error(1.0),
        "calibration_error_after": error(scale),
        "max_deviation_before": float(_coverage_gaps(y, dist, 1.0, curve).max()),
        "max_deviation_after": float(_coverage_gaps(y, dist, scale, curve).max()),
        "coverage_68_before": float(before[0]),
        "coverage_68_after": float(after[0]),
        "coverage_95_before": float(before[1]),
        "coverage_95_after": float(after[1]),
    }

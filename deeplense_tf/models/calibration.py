"""Post-hoc calibration of the Gaussian head's standard deviations: fit and apply a scale.

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

# Scales searched, log-spaced; 1.0 is on the grid, so calibration never makes the
# validation coverage worse.
_SCALES = np.exp(np.linspace(math.log(0.1), math.log(10.0), 801))


def _calibration_error(abs_z: np.ndarray, scale: float, levels) -> float:
    gaps = [abs(float(np.mean(abs_z <= scale * z_for_level(p))) - p) for p in levels]
    return float(np.mean(gaps))


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
            f"variance calibration needs a Gaussian output layer named {target!r} "
            f"(SoftClipLogVariance or GaussianMixtureCombine); the model has {kind} there"
        )
    if not (math.isfinite(scale) and scale > 0):
        raise RunError(f"variance calibration: scale must be a positive number, got {scale}")
    layer.log_variance_offset.assign_add(2.0 * math.log(scale))

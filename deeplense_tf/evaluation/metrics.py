"""Regression and calibration metrics, in the targets' physical units.

Pure numpy (plus the standard library's normal quantiles), so these functions run
anywhere and are tested against scikit-learn and hand computations.

Inputs are 1-D arrays of equal length: `y_true`, the predicted mean `y_pred` and, for a
Gaussian head, the predicted standard deviation `y_std` (same units as the target). An
interval "central at nominal level p" is `mean ± z * std` with `z = Φ⁻¹((1 + p) / 2)`.

Coverage, NLL and the coverage curve can also come from the model's actual predictive
distribution, `predictive=` a `deeplense_tf.predictive.Predictive` (Student-t head,
or the eight-view mixture under TTA): y lies in the central interval of level p exactly
when `|2 F(y) - 1| <= p`, so no Gaussian is assumed. With only `y_std` the distribution
is the Gaussian N(y_pred, y_std²) and the numbers equal the Gaussian formulas.
"""

from __future__ import annotations

import math

import numpy as np

# One definition of the interval levels, shared with the variance calibration (models/).
from deeplense_tf.intervals import CALIBRATION_LEVELS, z_for_level  # noqa: F401  (public here too)
from deeplense_tf.predictive import Predictive

COVERAGE_LEVELS = (0.68, 0.95)
DEFAULT_BINS = 8
#: The levels whose largest |observed - nominal| is reported: 5%, 10%, ..., 95%.
CURVE_LEVELS = tuple(level for level in CALIBRATION_LEVELS if level <= 0.95 + 1e-9)

_LOG_2PI = math.log(2.0 * math.pi)


def _as_1d(values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        array = array.reshape(-1)
    return array


def _check(y_true, y_pred, y_std=None):
    y_true = _as_1d(y_true)
    y_pred = _as_1d(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} values but y_pred has {y_pred.size}")
    if y_std is not None:
        y_std = _as_1d(y_std)
        if y_std.shape != y_true.shape:
            raise ValueError(f"y_std has {y_std.size} values but y_true has {y_true.size}")
    return y_true, y_pred, y_std


def point_metrics(y_true, y_pred) -> dict:
    """MAE, RMSE, R², bias (mean of pred - true), median absolute error, count.

    R² is NaN when fewer than two values or when `y_true` is constant (undefined there).
    All values are NaN for an empty input.
    """
    y_true, y_pred, _ = _check(y_true, y_pred)
    n = y_true.size
    if n == 0:
        nan = float("nan")
        return {"count": 0, "mae": nan, "rmse": nan, "r2": nan, "bias": nan, "median_ae": nan}
    error = y_pred - y_true
    abs_error = np.abs(error)
    ss_res = float(np.sum(error**2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if n >= 2 and ss_tot > 0 else float("nan")
    return {
        "count": int(n),
        "mae": float(abs_error.mean()),
        "rmse": float(math.sqrt(ss_res / n)),
        "r2": float(r2),
        "bias": float(error.mean()),
        "median_ae": float(np.median(abs_error)),
    }


def coverage(y_true, y_pred, y_std, level: float) -> float:
    """Fraction of `y_true` inside the central interval of nominal probability `level`."""
    y_true, y_pred, y_std = _check(y_true, y_pred, y_std)
    if y_true.size == 0:
        return float("nan")
    inside = np.abs(y_true - y_pred) <= z_for_level(level) * y_std
    return float(inside.mean())


def coverage_curve(y_true, y_pred, y_std, levels=CALIBRATION_LEVELS) -> dict:
    """Expected (nominal) and observed coverage for each level: `{"expected": [...], "observed": [...]}`.

    A calibrated model lies on the diagonal; below it the intervals are too narrow
    (over-confident), above it too wide.
    """
    y_true, y_pred, y_std = _check(y_true, y_pred, y_std)
    levels = [float(level) for level in levels]
    if y_true.size == 0:
        return {"expected": levels, "observed": [float("nan")] * len(levels)}
    # |error| / std compared with each z at once: one pass over the data for all levels.
    scaled = np.abs(y_true - y_pred) / np.where(y_std > 0, y_std, np.finfo(float).tiny)
    z = np.array([z_for_level(level) for level in levels])
    observed = (scaled[:, None] <= z[None, :]).mean(axis=0)
    return {"expected": levels, "observed": observed.tolist()}


def gaussian_nll(y_true, y_pred, y_std) -> float:
    """Mean negative log-likelihood of `y_true` under N(y_pred, y_std²), in nats.

    Computed in the target's physical units, so it depends on them (an offset of
    log(unit) per example); compare NLLs of the same target only.
    """
    y_true, y_pred, y_std = _check(y_true, y_pred, y_std)
    if y_true.size == 0:
        return float("nan")
    var = np.square(y_std)
    nll = 0.5 * (_LOG_2PI + np.log(var) + np.square(y_true - y_pred) / var)
    return float(nll.mean())


def gaussian_metrics(y_true, y_pred, y_std, levels=COVERAGE_LEVELS) -> dict:
    """Coverage at each level (keys `coverage_68`, `coverage_95`), mean NLL and mean std."""
    y_true, y_pred, y_std = _check(y_true, y_pred, y_std)
    out = {}
    for level in levels:
        out[f"coverage_{round(level * 100):d}"] = coverage(y_true, y_pred, y_std, level)
    out["nll"] = gaussian_nll(y_true, y_pred, y_std)
    out["mean_std"] = float(y_std.mean()) if y_std.size else float("nan")
    return out


def _distribution(y_pred, y_std, predictive):
    """The predictive distribution to score: `predictive`, else N(y_pred, y_std²), else None."""
    if predictive is not None:
        return predictive
    return None if y_std is None else Predictive(y_pred, y_std)


def coverage_report(y_true, predictive: Predictive, levels=CALIBRATION_LEVELS) -> dict:
    """The expected-coverage curve of `predictive` on `y_true`.

    Returns `{"expected": levels, "observed": [...], "max_deviation", "mean_deviation",
    "coverage_68", "coverage_95"}`; the deviations are |observed - expected| over the
    `CURVE_LEVELS` (5%..95%) among `levels`. Below the diagonal the intervals are too
    narrow (over-confident), above it too wide. NaN throughout for no example.
    """
    y_true = _as_1d(y_true)
    if len(predictive) != y_true.size:
        raise ValueError(f"predictive has {len(predictive)} examples but y_true has {y_true.size}")
    levels = [float(level) for level in levels]
    observed = predictive.central_coverage(y_true, levels)
    in_curve = [i for i, level in enumerate(levels) if level <= 0.95 + 1e-9]
    gaps = np.abs(observed[in_curve] - np.asarray(levels)[in_curve])
    nan = float("nan")
    marks = predictive.central_coverage(y_true, COVERAGE_LEVELS)
    return {
        "expected": levels,
        "observed": observed.tolist(),
        "max_deviation": float(gaps.max()) if y_true.size and gaps.size else nan,
        "mean_deviation": float(gaps.mean()) if y_true.size and gaps.size else nan,
        "coverage_68": float(marks[0]),
        "coverage_95": float(marks[1]),
    }


def distribution_metrics(y_true, predictive: Predictive) -> dict:
    """`coverage_68`, `coverage_95`, `max_coverage_deviation` (over 5%..95%), mean NLL
    (nats, target units) and mean predicted std of the distribution `predictive`."""
    y_true = _as_1d(y_true)
    report = coverage_report(y_true, predictive, CURVE_LEVELS)
    _, std = predictive.moments()
    return {
        "coverage_68": report["coverage_68"],
        "coverage_95": report["coverage_95"],
        "max_coverage_deviation": report["max_deviation"],
        "nll": predictive.nll(y_true),
        "mean_std": float(std.mean()) if std.size else float("nan"),
    }


def regression_metrics(y_true, y_pred, y_std=None, predictive: Predictive | None = None) -> dict:
    """Point metrics, plus coverage / NLL of the predictive distribution when there is one
    (`predictive`, or the Gaussian N(y_pred, y_std²) when only `y_std` is given)."""
    y_true, y_pred, y_std = _check(y_true, y_pred, y_std)
    out = point_metrics(y_true, y_pred)
    distribution = _distribution(y_pred, y_std, predictive)
    if distribution is not None:
        out.update(distribution_metrics(y_true, distribution))
    return out


def bin_edges(y_true, bins: int = DEFAULT_BINS, value_range=None) -> np.ndarray:
    """`bins + 1` equal-width edges across `value_range` (default: min..max of `y_true`)."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    y_true = _as_1d(y_true)
    if value_range is None:
        if y_true.size == 0:
            raise ValueError("cannot choose bin edges for an empty y_true without value_range")
        lo, hi = float(np.min(y_true)), float(np.max(y_true))
    else:
        lo, hi = (float(v) for v in value_range)
    if hi <= lo:  # a constant target still gets one usable bin around its value
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def binned_metrics(y_true, y_pred, y_std=None, bins: int = DEFAULT_BINS, value_range=None,
                   predictive: Predictive | None = None) -> list:
    """`regression_metrics` in equal-width bins of the true value.

    Returns one dict per bin with `lo`, `hi` (edges, physical units), `mean_true`,
    `mean_pred` (where `mean_pred` stops following `mean_true`, the regressor saturates)
    and the metrics of `regression_metrics` (coverage per bin included when there is a
    predictive distribution). The last bin includes its upper edge; values outside
    `value_range` are left out. Empty bins have count 0 and NaN metrics.
    """
    y_true, y_pred, y_std = _check(y_true, y_pred, y_std)
    distribution = _distribution(y_pred, y_std, predictive)
    edges = bin_edges(y_true, bins, value_range)
    # digitize against the inner edges: bin k holds edges[k] <= y < edges[k+1], last one closed.
    which = np.clip(np.searchsorted(edges, y_true, side="right") - 1, 0, len(edges) - 2)
    in_range = (y_true >= edges[0]) & (y_true <= edges[-1])
    rows = []
    for k in range(len(edges) - 1):
        mask = in_range & (which == k)
        row = {"lo": float(edges[k]), "hi": float(edges[k + 1])}
        row["mean_true"] = float(y_true[mask].mean()) if mask.any() else float("nan")
        row["mean_pred"] = float(y_pred[mask].mean()) if mask.any() else float("nan")
        row.update(
            regression_metrics(
                y_true[mask], y_pred[mask],
                predictive=None if distribution is None else distribution.subset(mask),
            )
        )
        rows.append(row)
    return rows


def baseline_mae(y_true) -> float:
    """MAE of always predicting the mean of `y_true` (the "prior mean" row of published tables)."""
    y_true = _as_1d(y_true)
    return float(np.abs(y_true - y_true.mean()).mean()) if y_true.size else float("nan")


def evaluate_target(y_true, y_pred, y_std=None, bins: int = DEFAULT_BINS, value_range=None,
                    predictive: Predictive | None = None) -> dict:
    """Everything `deeplense evaluate` reports for one target.

    `{"overall": {...}, "binned": [...], "baseline_mae": float, "calibration": {...} | None}`;
    `calibration` is `coverage_report` of the predictive distribution (`predictive`, or
    the Gaussian of `y_std`), None for a point prediction.
    """
    y_true, y_pred, y_std = _check(y_true, y_pred, y_std)
    distribution = _distribution(y_pred, y_std, predictive)
    return {
        "overall": regression_metrics(y_true, y_pred, predictive=distribution),
        "baseline_mae": baseline_mae(y_true),
        "binned": binned_metrics(y_true, y_pred, bins=bins, value_range=value_range,
                                 predictive=distribution),
        "calibration": None if distribution is None else coverage_report(y_true, distribution),
    }


def to_jsonable(value):
    """Recursively turn numpy scalars/arrays into Python types and NaN/inf into None (valid JSON)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        return value if math.isfinite(value) else None
    return value

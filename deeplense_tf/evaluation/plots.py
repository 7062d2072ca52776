"""Evaluation figures: predicted vs true, residuals vs true, calibration.

One PNG per target with a panel for each (calibration only for a Gaussian head), so a
reader sees in one place how close the predictions are, where in the target's range the
error grows (the heavy-axion end, where the vortex is shorter than a pixel) and whether
the quoted uncertainties can be trusted. Uses matplotlib's object API on the Agg canvas:
no pyplot state, no display needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deeplense_tf.evaluation.metrics import (
    COVERAGE_LEVELS,
    DEFAULT_BINS,
    bin_edges,
    coverage_curve,
    point_metrics,
)

MAX_POINTS = 2000  # more points than this hide each other; subsample for the scatter panels
MAX_ERROR_BARS = 250  # error bars on a subset only: hundreds of them turn into a solid band

_UNITS = {
    "ev": "eV",
    "arcsec": "arcsec",
    "msun": "M☉",
    "kpc": "kpc",
    "kpc2": "kpc²",
    "deg": "deg",
    "rad": "rad",
    "s": "s",
}


def axis_label(target: str) -> str:
    """A readable axis label with units from a target name (`log10_m_axion_ev` -> `log10(m_axion / eV) [dex]`).

    Target names carry their units as the last `_`-separated word; a `log10_` prefix means
    the value is a decimal logarithm, measured in dex.
    """
    is_log = target.startswith("log10_")
    base = target[len("log10_") :] if is_log else target
    head, _, last = base.rpartition("_")
    unit = _UNITS.get(last.lower()) if head else None
    if unit:
        base = head
    if is_log:
        return f"log10({base} / {unit}) [dex]" if unit else f"log10 {base} [dex]"
    return f"{base} [{unit}]" if unit else f"{base} (dimensionless)"


def _subsample(n: int, limit: int, seed: int = 0) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _binned_quantiles(y_true, residual, edges):
    """Per bin: centre, median residual, 16th and 84th percentiles (NaN where empty)."""
    centres, med, lo, hi = [], [], [], []
    which = np.clip(np.searchsorted(edges, y_true, side="right") - 1, 0, len(edges) - 2)
    for k in range(len(edges) - 1):
        r = residual[which == k]
        centres.append(0.5 * (edges[k] + edges[k + 1]))
        if r.size:
            q16, q50, q84 = np.percentile(r, [16, 50, 84])
        else:
            q16 = q50 = q84 = np.nan
        med.append(q50)
        lo.append(q16)
        hi.append(q84)
    return np.array(centres), np.array(med), np.array(lo), np.array(hi)


def plot_target(
    target: str,
    y_true,
    y_pred,
    y_std=None,
    path: str | Path = "target.png",
    *,
    title: str | None = None,
    bins: int = DEFAULT_BINS,
    max_points: int = MAX_POINTS,
) -> Path:
    """Write the evaluation figure of one target to `path` (PNG) and return the path.

    `y_true`, `y_pred`, `y_std` are 1-D arrays in the target's physical units; `y_std`
    (the Gaussian head's standard deviation) adds error bars and the calibration panel.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    y_std = None if y_std is None else np.asarray(y_std, dtype=np.float64).reshape(-1)
    label = axis_label(target)
    n = y_true.size
    stats = point_metrics(y_true, y_pred)

    panels = 3 if y_std is not None else 2
    fig = Figure(figsize=(5.2 * panels, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)
    shown = _subsample(n, max_points)
    note = f" ({shown.size} of {n} shown)" if shown.size < n else ""

    # 1. predicted vs true, with the identity line a perfect regressor would sit on.
    ax = axes[0]
    lo = float(min(y_true.min(), y_pred.min())) if n else 0.0
    hi = float(max(y_true.max(), y_pred.max())) if n else 1.0
    ax.plot(y_true[shown], y_pred[shown], "o", ms=2.5, alpha=0.4, color="tab:blue",
            label=f"prediction{note}")
    if y_std is not None:
        barred = shown[_subsample(shown.size, MAX_ERROR_BARS, seed=1)]
        bar_note = f" (on {barred.size} points)" if barred.size < shown.size else ""
        ax.errorbar(
            y_true[barred], y_pred[barred], yerr=y_std[barred], fmt="none", alpha=0.5,
            elinewidth=0.7, color="tab:blue", label=f"± 1σ predicted{bar_note}",
        )
    ax.plot([lo, hi], [lo, hi], "k--", lw=1.2, label="identity (perfect)")
    ax.set_xlabel(f"true {label}")
    ax.set_ylabel(f"predicted {label}")
    ax.set_title(f"Predicted vs true  (MAE {stats['mae']:.3g}, R² {stats['r2']:.3f})")
    ax.legend(loc="upper left", fontsize=8)

    # 2. residuals vs true: the binned median shows bias (saturation bends it), the band spread.
    ax = axes[1]
    residual = y_pred - y_true
    ax.plot(y_true[shown], residual[shown], "o", ms=2.5, alpha=0.3, color="tab:gray",
            label=f"residual{note}")
    if n:
        edges = bin_edges(y_true, bins)
        centres, med, q16, q84 = _binned_quantiles(y_true, residual, edges)
        ax.fill_between(centres, q16, q84, color="tab:orange", alpha=0.3,
                        label="16–84% of residuals per bin")
        ax.plot(centres, med, "o-", color="tab:red", lw=1.8, label=f"median per bin ({bins} bins)")
    ax.axhline(0.0, color="k", ls="--", lw=1.2, label="zero error")
    ax.set_xlabel(f"true {label}")
    ax.set_ylabel(f"predicted − true {label}")
    ax.set_title(f"Residuals vs true  (bias {stats['bias']:+.3g})")
    ax.legend(loc="best", fontsize=8)

    # 3. calibration: observed vs nominal coverage of the central Gaussian intervals.
    if y_std is not None:
        ax = axes[2]
        curve = coverage_curve(y_true, y_pred, y_std)
        ax.plot([0, 1], [0, 1], "k--", lw=1.2, label="perfectly calibrated")
        ax.plot(curve["expected"], curve["observed"], "o-", color="tab:green", ms=3.5,
                label="observed")
        marks = coverage_curve(y_true, y_pred, y_std, COVERAGE_LEVELS)
        summary = ", ".join(f"{seen:.2f} at {level:.0%}" for level, seen in
                            zip(marks["expected"], marks["observed"]))
        ax.plot(marks["expected"], marks["observed"], "s", color="tab:red", ms=6,
                label=f"observed: {summary}")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.03)  # room for points at full coverage
        ax.set_aspect("equal")
        ax.set_xlabel("expected coverage (nominal level of central interval)")
        ax.set_ylabel("observed coverage (fraction of true values inside)")
        ax.set_title("Calibration  (below diagonal: over-confident)")
        ax.legend(loc="upper left", fontsize=8)

    from matplotlib.ticker import MaxNLocator

    for ax in axes[:2]:  # long tick labels (-23.75) collide at the default density
        ax.xaxis.set_major_locator(MaxNLocator(6))
    fig.suptitle(title or f"{target} on {n} examples", fontsize=12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path

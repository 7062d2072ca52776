"""Evaluation figures: predicted vs true, residuals vs true, calibration; coverage.

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
    calibration: dict | None = None,
) -> Path:
    """Write the evaluation figure of one target to `path` (PNG) and return the path.

    `y_true`, `y_pred`, `y_std` are 1-D arrays in the target's physical units; `y_std`
    (the predicted standard deviation) adds error bars and the calibration panel.
    `calibration` (a `metrics.coverage_report`, computed from the actual predictive
    distribution) is drawn in that panel; without it the panel shows the Gaussian of
    `y_std`.
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
        curve = calibration or coverage_curve(y_true, y_pred, y_std)
        ax.plot([0, 1], [0, 1], "k--", lw=1.2, label="perfectly calibrated")
        worst = curve.get("max_deviation")
        ax.plot(curve["expected"], curve["observed"], "o-", color="tab:green", ms=3.5,
                label="observed" + (f" (largest gap {worst:.3f})" if worst is not None else ""))
        marks = {"expected": [], "observed": []}
        for level, seen in zip(curve["expected"], curve["observed"]):
            if any(abs(level - mark) < 1e-9 for mark in COVERAGE_LEVELS):
                marks["expected"].append(level)
                marks["observed"].append(seen)
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


def plot_coverage(target: str, result: dict, path: str | Path, *, title: str | None = None) -> Path:
    """The coverage figure of one target: the expected-coverage curve (observed minus
    nominal, with the binomial 2-sigma band of a calibrated model on this many examples)
    and the 68% / 95% coverage in each bin of the true value.

    `result` is one target of `evaluate_target` (as in metrics.json: `calibration`,
    `binned`, `overall`), so the quickstart report can draw it from its metrics alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curve = result["calibration"]
    n = int(result["overall"]["count"])
    expected = np.asarray(curve["expected"], np.float64)
    observed = np.asarray([np.nan if v is None else v for v in curve["observed"]], np.float64)
    fig = Figure(figsize=(11.0, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)

    band = 2.0 * np.sqrt(expected * (1.0 - expected) / max(n, 1))
    left.fill_between(expected, -band, band, color="tab:gray", alpha=0.25,
                      label=f"±2σ sampling band of a calibrated model (N={n})")
    left.axhline(0.0, color="k", ls="--", lw=1.0)
    left.plot(expected, observed - expected, "o-", color="tab:green", ms=4,
              label=f"observed − nominal (largest |gap| {_num(curve.get('max_deviation'))} over 5–95%)")
    left.set_xlabel("nominal level of the central interval")
    left.set_ylabel("observed − nominal coverage")
    left.set_title(f"Expected coverage  (68%: {_num(curve.get('coverage_68'))}, "
                   f"95%: {_num(curve.get('coverage_95'))})")
    left.legend(loc="lower left", fontsize=8)

    rows = [r for r in result["binned"] if r.get("count")]
    centres = np.array([0.5 * (r["lo"] + r["hi"]) for r in rows])
    width = 0.38 * (rows[0]["hi"] - rows[0]["lo"]) if rows else 0.1
    for offset, key, level, colour in ((-0.5, "coverage_68", 0.68, "tab:blue"),
                                       (0.5, "coverage_95", 0.95, "tab:orange")):
        values = np.array([np.nan if r.get(key) is None else r[key] for r in rows], np.float64)
        right.bar(centres + offset * width, values, width=width, color=colour, alpha=0.7,
                  label=f"{level:.0%} interval")
        right.axhline(level, color=colour, ls="--", lw=1.0)
    right.set_ylim(0.0, 1.05)
    right.set_xlabel(f"true {axis_label(target)}")
    right.set_ylabel("observed coverage in the bin")
    right.set_title("Coverage per bin of the true value (dashed: nominal)")
    right.legend(loc="lower left", fontsize=8)
    fig.suptitle(title or f"{target}: coverage of the predicted intervals", fontsize=12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _num(value, digits: int = 3) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"

"""Joint metrics and the corner plot of the full-covariance head (`model.head: full_covariance`).

`evaluate_joint(run, images, truth)` scores the joint Gaussian the run predicts over all
its targets: the squared Mahalanobis distance `d² = (y - μ)ᵀ Σ⁻¹ (y - μ)` of each test
lens is chi-square with T degrees of freedom for a calibrated model, so the fractions of
lenses with `d²` below the χ²_T 68% and 95% quantiles should be 0.68 and 0.95 (the joint
calibration); their gap is what a per-target coverage cannot see (correlations that are
wrong). The per-target MAE, R² and coverage come from `report.evaluate_run` as for
every head (the model's per-target outputs are the joint's marginals).

Under TTA the deployed joint prediction is the equal-weight mixture of the eight D4
views' Gaussians, whose d² is not chi-square; the joint metrics then score the Gaussian
with the mixture's mean and covariance (moment-matched) and say so in
`"distribution"`. The per-target metrics under TTA stay exact (the marginals of the
mixture are the mixtures of the marginals).

`plot_corner` draws one lens's posterior: the 1-D marginal densities on the diagonal, the
68% and 95% ellipses of every pair below it, the truth as lines and points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from deeplense_tf.errors import DataError
from deeplense_tf.files import save_figure
from deeplense_tf.models.covariance import JOINT_LEVELS

CORNER_PLOT = "corner.png"


def evaluate_joint(run, images, truth: dict, *, tta: bool = False, batch_size: int = 256,
                   corner_index: int = 0) -> dict:
    """Joint calibration of `run` (a full-covariance `Run`) on `images` with `truth`
    (`{target: [N]}`, physical units; rows with a NaN target are left out).

    Returns the `metrics.json["joint"]` record: `examples`, `degrees_of_freedom` (T),
    `targets`, `distribution`, `levels` (0.68, 0.95), `coverage` (the observed fraction
    at each level), `coverage_68`, `coverage_95`, `mean_d2` (T when calibrated),
    `mean_log_density` (nats, physical units) and `corner` (the posterior of one lens:
    its index among the rows used, `mean` [T], `covariance` [T, T], `truth` [T]).
    """
    targets = list(run.targets)
    y = np.stack([np.asarray(truth[t], np.float64).reshape(-1) for t in targets], axis=1)
    complete = np.isfinite(y).all(axis=1)
    if not complete.any():
        raise DataError("joint metrics: no example has a value for every target "
                        f"({', '.join(targets)})")
    prediction = run.predict_joint(np.asarray(images)[complete], batch_size=batch_size, tta=tta)
    joint = prediction[0] if tta else prediction
    y = y[complete]
    coverage = joint.joint_coverage(y, JOINT_LEVELS)
    index = min(max(int(corner_index), 0), len(y) - 1)
    return {
        "examples": int(complete.sum()),
        "degrees_of_freedom": len(targets),
        "targets": targets,
        "distribution": ("gaussian moment-matched to the 8-view D4 mixture (TTA)" if tta
                         else "gaussian (full covariance)"),
        "levels": list(JOINT_LEVELS),
        "coverage": [float(c) for c in coverage],
        "coverage_68": float(coverage[0]),
        "coverage_95": float(coverage[1]),
        "mean_d2": float(np.mean(joint.mahalanobis2(y))),
        "mean_log_density": float(np.mean(joint.logpdf(y))),
        "corner": {
            "index": index,
            "mean": joint.mean[index].tolist(),
            "covariance": joint.covariance[index].tolist(),
            "truth": y[index].tolist(),
        },
    }


def _ellipse(mean, cov, level: float, points: int = 120) -> np.ndarray:
    """`[points, 2]` boundary of the 2-D Gaussian region holding `level`."""
    radius = np.sqrt(stats.chi2.ppf(level, 2))
    values, vectors = np.linalg.eigh(cov)
    angle = np.linspace(0.0, 2.0 * np.pi, points)
    circle = np.stack([np.cos(angle), np.sin(angle)], axis=1) * radius
    return np.asarray(mean) + circle * np.sqrt(np.maximum(values, 0.0)) @ vectors.T


def plot_corner(mean, covariance, truth, targets, path, *, title: str | None = None) -> Path:
    """Corner plot of one Gaussian posterior (`mean` [T], `covariance` [T, T], physical
    units) against `truth` [T]; written atomically to `path` (PNG). Returns `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mean, cov, truth = (np.asarray(a, np.float64) for a in (mean, covariance, truth))
    size = len(targets)
    std = np.sqrt(np.diag(cov))
    fig = Figure(figsize=(1.9 * size + 1, 1.9 * size + 1))
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(size, size, squeeze=False))
    for i in range(size):
        for j in range(size):
            ax = axes[i, j]
            if j > i:
                ax.set_visible(False)
                continue
            lo_j, hi_j = mean[j] - 4 * std[j], mean[j] + 4 * std[j]
            lo_j, hi_j = min(lo_j, truth[j] - std[j]), max(hi_j, truth[j] + std[j])
            if i == j:
                grid = np.linspace(lo_j, hi_j, 200)
                ax.plot(grid, stats.norm.pdf(grid, mean[j], std[j]), color="C0")
                ax.axvline(truth[j], color="C3", linewidth=1)
                ax.set_yticks([])
                ax.set_xlim(lo_j, hi_j)
                ax.set_ylim(bottom=0.0)
            else:
                pair = [j, i]
                block = cov[np.ix_(pair, pair)]
                for level, style in ((0.68, "-"), (0.95, "--")):
                    ring = _ellipse(mean[pair], block, level)
                    ax.plot(ring[:, 0], ring[:, 1], style, color="C0", linewidth=1)
                ax.plot(truth[j], truth[i], "*", color="C3", markersize=8)
                ax.axvline(truth[j], color="C3", linewidth=0.5)
                ax.axhline(truth[i], color="C3", linewidth=0.5)
                lo_i = min(mean[i] - 4 * std[i], truth[i] - std[i])
                hi_i = max(mean[i] + 4 * std[i], truth[i] + std[i])
                ax.set_xlim(lo_j, hi_j)
                ax.set_ylim(lo_i, hi_i)
            ax.tick_params(labelsize=6)
            if i == size - 1:
                ax.set_xlabel(targets[j], fontsize=7)
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(targets[i], fontsize=7)
            elif j > 0:
                ax.set_yticklabels([])
    fig.suptitle(title or "posterior (68% and 95% regions) and truth (red)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)

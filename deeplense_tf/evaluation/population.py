"""One axion mass from many lenses: combine per-lens posteriors into the shared value's.

In nature every lens shares one axion mass θ = log10(m / eV); the training set drew θ
per image from a prior π_train. The network's predictive distribution for lens i is
(taken as) its posterior under that prior, q_i(θ) ≈ p(θ | x_i) ∝ L_i(θ) π_train(θ).
For independent lenses that share θ, with a population prior π_pop,

    p(θ | x_1..x_N) ∝ π_pop(θ) Π_i L_i(θ) ∝ π_pop(θ) Π_i q_i(θ) / π_train(θ),

evaluated on a grid over π_train's support (outside it no lens was trained, and the
true per-lens posterior is zero there). With both priors uniform over the training
range the prior terms are constant inside it.

Near the prior's edges a uniform prior is not divided out by a constant: the true
posterior L_i π_train is L_i *truncated* at the edge, and a head trained by maximum
likelihood reports that truncated posterior's mean and spread (moved inwards), not L_i's.
Multiplying such q_i gives a product biased inwards at every N. `edge_correction` (on by
default for the uniform prior) undoes the truncation: it finds the Gaussian N(a_i, s_i)
whose truncation to the range has q_i's mean and std (Newton on the truncated-normal
moments) and maps q_i onto it (shift and stretch, so a Student-t's or a mixture's shape is
kept): q_i / π_train recovered as a likelihood that may peak at or beyond the edge. Lenses
far inside the range are left unchanged. See docs/population.md for the assumptions
(independence, calibrated per-lens posteriors, the prior division, the floor set by
model systematics).

    from deeplense_tf.evaluation.population import combine_posteriors
    result = combine_posteriors(predictive, prior_range=(-24.0, -22.0))
    result.summary()     # mean, std, map, 68% / 95% intervals
    result.narrowing()   # the same for the first 1, 2, 4, ... lenses

`predictive` is a `deeplense_tf.predictive.Predictive` (what `Run.predict`
gives, Gaussian, Student-t or the TTA mixture), in the target's physical units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from deeplense_tf.errors import DataError, RunError
from deeplense_tf.predictive import Predictive

DEFAULT_GRID = 2001
INTERVAL_LEVELS = (0.68, 0.95)


def _cumulative(grid: np.ndarray, density: np.ndarray) -> np.ndarray:
    """Trapezoid CDF of `density` on `grid`, normalised to end at 1."""
    steps = 0.5 * (density[1:] + density[:-1]) * np.diff(grid)
    cdf = np.concatenate([[0.0], np.cumsum(steps)])
    return cdf / cdf[-1]


def summarise(grid, log_density) -> dict:
    """Mean, std, MAP, equal-tailed 68% / 95% intervals (`interval_68`, `interval_95`) and
    highest-density ones (`hdi_68`, `hdi_95`: the span of the grid points of highest
    density holding that mass; one interval, so meant for unimodal posteriors) of a
    density known up to a constant as `log_density` on `grid` (both `[G]`)."""
    grid = np.asarray(grid, np.float64)
    log_density = np.asarray(log_density, np.float64)
    density = np.exp(log_density - np.max(log_density))
    norm = np.trapezoid(density, grid)
    density = density / norm
    mean = float(np.trapezoid(grid * density, grid))
    std = float(math.sqrt(max(np.trapezoid((grid - mean) ** 2 * density, grid), 0.0)))
    cdf = _cumulative(grid, density)
    out = {"mean": mean, "std": std, "map": float(grid[int(np.argmax(density))])}
    # Highest-density intervals too: at a prior edge the density can peak at the edge
    # itself, which an equal-tailed interval (F = 0.025 .. 0.975) never reaches.
    order = np.argsort(density)[::-1]
    cell = np.gradient(grid)
    mass = np.cumsum(density[order] * cell[order])
    mass /= mass[-1]
    for level in INTERVAL_LEVELS:
        lo = float(np.interp(0.5 - level / 2.0, cdf, grid))
        hi = float(np.interp(0.5 + level / 2.0, cdf, grid))
        out[f"interval_{round(level * 100):d}"] = [lo, hi]
        inside = order[: int(np.searchsorted(mass, level)) + 1]
        out[f"hdi_{round(level * 100):d}"] = [float(grid[inside].min()), float(grid[inside].max())]
    return out


_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# Lenses whose mean lies this many stds inside both edges are not corrected: the truncation
# moves their moments by less than 1e-14 of a std.
_EDGE_STDS = 8.0


def truncated_normal_moments(a, s, lo: float, hi: float):
    """Mean and variance of N(a, s²) truncated to [lo, hi] (arrays), stable far in the tails.

    Z = Φ(β) - Φ(α) is taken in log space from the tail away from the mass (so a far
    below `lo` still gives Z > 0), and the moments from φ/Z ratios.
    """
    a, s = np.asarray(a, np.float64), np.asarray(s, np.float64)
    alpha, beta = (lo - a) / s, (hi - a) / s
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lower_tail = special.log_ndtr(beta) + np.log1p(-np.exp(special.log_ndtr(alpha) - special.log_ndtr(beta)))
        upper_tail = special.log_ndtr(-alpha) + np.log1p(-np.exp(special.log_ndtr(-beta) - special.log_ndtr(-alpha)))
        log_z = np.where(alpha > 0, upper_tail, lower_tail)
        ratio_a = np.exp(-0.5 * alpha**2 - _HALF_LOG_2PI - log_z)
        ratio_b = np.exp(-0.5 * beta**2 - _HALF_LOG_2PI - log_z)
    mean = a + s * (ratio_a - ratio_b)
    var = s**2 * (1.0 + alpha * ratio_a - beta * ratio_b - (ratio_a - ratio_b) ** 2)
    return mean, var


def untruncate(mean, std, lo: float, hi: float, iterations: int = 40):
    """`(a, s)` such that N(a, s²) truncated to [lo, hi] has `mean` and `std` (arrays).

    Newton on (a, log s) with a finite-difference Jacobian, steps limited to one std in
    a and a factor e in s. A mean at or outside an edge is first moved 1% of a std inside
    (a truncated law's mean lies inside); s is capped at 100 range widths (a nearly flat
    likelihood).
    """
    m = np.clip(np.asarray(mean, np.float64), lo + 0.01 * np.asarray(std), hi - 0.01 * np.asarray(std))
    target = np.stack([m, np.log(np.asarray(std, np.float64))])
    a, log_s = target[0].copy(), target[1].copy()
    cap = math.log(100.0 * (hi - lo))

    def moments(a, log_s):
        mu, var = truncated_normal_moments(a, np.exp(log_s), lo, hi)
        return np.stack([mu, 0.5 * np.log(np.maximum(var, 1e-300))])

    for _ in range(iterations):
        step = 1e-6
        f = moments(a, log_s) - target
        d_a = (moments(a + step * np.exp(log_s), log_s) - target - f) / (step * np.exp(log_s))
        d_s = (moments(a, log_s + step) - target - f) / step
        with np.errstate(divide="ignore", invalid="ignore"):
            det = d_a[0] * d_s[1] - d_s[0] * d_a[1]
            delta_a = -(d_s[1] * f[0] - d_s[0] * f[1]) / det
            delta_s = -(-d_a[1] * f[0] + d_a[0] * f[1]) / det
            limit = np.minimum(1.0, 1.0 / np.maximum(np.abs(delta_a) / np.exp(log_s), np.abs(delta_s)))
        limit = np.where(np.isfinite(limit), limit, 0.0)
        a = a + limit * np.nan_to_num(delta_a)
        log_s = np.minimum(log_s + limit * np.nan_to_num(delta_s), cap)
    return a, np.exp(log_s)


def likelihood_from_posterior(predictive: Predictive, prior_range) -> Predictive:
    """Each lens's posterior under a uniform prior on `prior_range`, turned into its
    likelihood: the truncation at the edges undone (`untruncate`), the distribution's
    shape kept (every component shifted and stretched by the same map)."""
    lo, hi = (float(v) for v in prior_range)
    mean, std = predictive.moments()
    near = (mean - lo < _EDGE_STDS * std) | (hi - mean < _EDGE_STDS * std)
    a, s = mean.copy(), std.copy()
    if near.any():
        a[near], s[near] = untruncate(mean[near], std[near], lo, hi)
    stretch = s / std
    components = a + (predictive.mean - mean) * stretch
    return Predictive(components, predictive.std * stretch, predictive.df)


@dataclass
class PopulationPosterior:
    """The combined posterior of the shared value on a grid.

    Attributes:
        grid: `[G]` values of the shared parameter (physical units).
        per_lens: `[N, G]` log of each lens's density ratio q_i / π_train on the grid.
        log_population_prior: `[G]` log π_pop (up to a constant).
        prior_range: `(lo, hi)` of the training prior.
        systematic_std: std (physical units) of a bias shared by every lens (the model's
            systematic error at the shared value), integrated out: the combined posterior
            is convolved with N(0, systematic_std²), so its width stops shrinking at about
            that floor instead of claiming a precision the model's bias does not allow.
    """

    grid: np.ndarray
    per_lens: np.ndarray
    log_population_prior: np.ndarray
    prior_range: tuple[float, float]
    systematic_std: float = 0.0

    @property
    def lenses(self) -> int:
        return self.per_lens.shape[0]

    def log_posterior(self, n: int | None = None) -> np.ndarray:
        """`[G]` log posterior (unnormalised) from the first `n` lenses (default all)."""
        n = self.lenses if n is None else int(n)
        return self._with_systematic(self.log_population_prior + self.per_lens[:n].sum(axis=0))

    def _with_systematic(self, log_post: np.ndarray) -> np.ndarray:
        """The shared bias δ ~ N(0, systematic_std²) integrated out: the product of the
        lenses' likelihoods, evaluated at θ + δ, convolved over δ (on the grid; the
        range's edges still bound θ)."""
        if self.systematic_std <= 0:
            return log_post
        from scipy.signal import fftconvolve

        step = float(self.grid[1] - self.grid[0])
        half = int(math.ceil(6.0 * self.systematic_std / step))
        offsets = np.arange(-half, half + 1) * step
        kernel = np.exp(-0.5 * (offsets / self.systematic_std) ** 2)
        peak = np.max(log_post)
        smeared = fftconvolve(np.exp(log_post - peak), kernel, mode="same")
        return peak + np.log(np.maximum(smeared, 1e-300))

    def density(self, n: int | None = None) -> np.ndarray:
        """`[G]` normalised posterior density from the first `n` lenses."""
        log_post = self.log_posterior(n)
        density = np.exp(log_post - np.max(log_post))
        return density / np.trapezoid(density, self.grid)

    def summary(self, n: int | None = None) -> dict:
        return summarise(self.grid, self.log_posterior(n))

    def narrowing(self, counts=None) -> list[dict]:
        """`summary` for the first n lenses, n = 1, 2, 4, ... and N (or `counts`)."""
        if counts is None:
            counts = sorted({*(2**k for k in range(int(math.log2(self.lenses)) + 1)), self.lenses})
        cumulative = self.log_population_prior + np.cumsum(self.per_lens, axis=0)
        return [dict(n=int(n), **summarise(self.grid, self._with_systematic(cumulative[n - 1])))
                for n in counts]


def combine_posteriors(
    predictive: Predictive,
    prior_range,
    *,
    grid_size: int = DEFAULT_GRID,
    log_train_prior=None,
    log_population_prior=None,
    edge_correction: bool = True,
    systematic_std: float = 0.0,
) -> PopulationPosterior:
    """Combine N per-lens posteriors into the posterior of one shared value.

    Args:
        predictive: the N lenses' predictive distributions (physical units).
        prior_range: `(lo, hi)`, the support of the training prior; the grid spans it.
        grid_size: grid points (the default resolves 1e-3 dex over a 2-dex range).
        log_train_prior: callable `grid -> [G]` log π_train (up to a constant); default
            uniform over `prior_range` (constant: dividing it out changes nothing inside).
        log_population_prior: callable `grid -> [G]` log π_pop; default uniform over
            `prior_range`.
        edge_correction: with the uniform training prior, undo the truncation of the
            per-lens posteriors at the range's edges (`likelihood_from_posterior`).
            Ignored with `log_train_prior` (that prior is divided out as given).
        systematic_std: the model's systematic error shared by all lenses (physical
            units, 0 = none), integrated out (`PopulationPosterior.systematic_std`);
            `systematic_floor` measures it on a labelled split.

    Returns:
        `PopulationPosterior`. Raises DataError when there is no lens.
    """
    lo, hi = (float(v) for v in prior_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise DataError(f"population inference: prior range must be (lo, hi) with lo < hi, got {prior_range}")
    if len(predictive) == 0:
        raise DataError("population inference: no lens to combine")
    if grid_size < 3:
        raise DataError(f"population inference: grid_size must be at least 3, got {grid_size}")
    grid = np.linspace(lo, hi, int(grid_size))
    if edge_correction and log_train_prior is None:
        predictive = likelihood_from_posterior(predictive, (lo, hi))
    per_lens = predictive.log_density_grid(grid)
    if log_train_prior is not None:
        per_lens = per_lens - np.asarray(log_train_prior(grid), np.float64)[None, :]
    log_pop = np.zeros_like(grid) if log_population_prior is None else np.asarray(
        log_population_prior(grid), np.float64
    )
    if not (math.isfinite(systematic_std) and systematic_std >= 0):
        raise DataError(f"population inference: systematic std must be >= 0, got {systematic_std}")
    return PopulationPosterior(grid=grid, per_lens=per_lens, log_population_prior=log_pop,
                               prior_range=(lo, hi), systematic_std=float(systematic_std))


def systematic_floor(y_true, y_pred, bins: int = 8, value_range=None) -> float:
    """The model's systematic error, for `systematic_std`: the root-mean-square over
    equal-width bins of the true value of the mean error (pred - true) in each bin.

    Measure it on a labelled split the population is not drawn from (validation): it is
    what N lenses at one mass cannot average away. Empty bins are left out.
    """
    from deeplense_tf.evaluation.metrics import binned_metrics

    rows = binned_metrics(y_true, y_pred, bins=bins, value_range=value_range)
    biases = np.array([r["bias"] for r in rows if r["count"]], np.float64)
    return float(np.sqrt(np.mean(biases**2))) if biases.size else float("nan")


@dataclass
class SummaryLikelihood:
    """The likelihood of a lens's *prediction* given the shared value, calibrated on
    simulations: p(mean_i | θ) with

        mean_i = θ + b(θ) + c(θ) std_i ε,   ε ~ the head's standardised law (Gaussian, or
                                            Student-t with the lens's df, unit variance),

    b(θ) (the model's bias at θ) a local-linear fit and c(θ)² (how far the predicted stds
    are off at θ) a kernel average of the squared standardised errors of a labelled split
    drawn from the training prior (validation). Where the model saturates (a vortex
    longer than the crop at the light end, hidden in the centre at the heavy end) b(θ)
    cancels θ and the likelihood goes flat there, which a product of per-lens posteriors
    cannot express: the combination then spreads over the values the images cannot tell
    apart instead of piling up at the saturated prediction.

    Attributes:
        grid: `[G]` values of θ where b and c are tabulated (physical units).
        bias, spread: `[G]` b(θ) and c(θ).
        bias_error: `[G]` standard error of b(θ) (from the finite labelled split). Every
            lens shares that error, so N lenses cannot average it away: it is the floor
            `combine_summaries` integrates out.
        bandwidth: the kernel width (physical units) of the fits.
        examples: how many labelled examples were used.
    """

    grid: np.ndarray
    bias: np.ndarray
    spread: np.ndarray
    bias_error: np.ndarray
    bandwidth: float
    examples: int

    @classmethod
    def fit(cls, y_true, mean, std, prior_range, *, bandwidth: float = 0.08, points: int = 201):
        """Fit b(θ) and c(θ) on labelled predictions (`y_true`, `mean`, `std`, each `[M]`)."""
        y, m, sd = (np.asarray(v, np.float64).reshape(-1) for v in (y_true, mean, std))
        ok = np.isfinite(y) & np.isfinite(m) & np.isfinite(sd) & (sd > 0)
        if ok.sum() < 20:
            raise DataError(f"summary likelihood: need at least 20 labelled predictions, got {int(ok.sum())}")
        y, m, sd = y[ok], m[ok], sd[ok]
        grid = np.linspace(*prior_range, points)
        weights = np.exp(-0.5 * ((y[None, :] - grid[:, None]) / bandwidth) ** 2)  # [points, M]
        residual = m - y
        # Local-linear regression: no boundary bias at the prior's edges, where b matters most.
        dx = y[None, :] - grid[:, None]
        s0, s1, s2 = weights.sum(1), (weights * dx).sum(1), (weights * dx**2).sum(1)
        t0, t1 = (weights * residual).sum(1), (weights * dx * residual).sum(1)
        bias = (s2 * t0 - s1 * t1) / (s0 * s2 - s1**2)
        error = residual - np.interp(y, grid, bias)
        z2 = (error / sd) ** 2
        spread = np.sqrt((weights * z2).sum(1) / s0)
        # The local-linear estimate is sum_k l_k r_k with l_k = w_k (s2 - s1 dx_k) / (s0 s2 - s1²):
        # its standard error is sqrt(sum_k l_k² e_k²).
        effective = weights * (s2[:, None] - s1[:, None] * dx) / (s0 * s2 - s1**2)[:, None]
        bias_error = np.sqrt((effective**2 * error[None, :] ** 2).sum(1))
        return cls(grid=grid, bias=bias, spread=spread, bias_error=bias_error, bandwidth=float(bandwidth),
                   examples=int(ok.sum()))

    def log_likelihood_grid(self, predictive: Predictive, grid) -> np.ndarray:
        """`[N, G]`: log p(mean_i | θ) for every lens and every θ in `grid`."""
        grid = np.asarray(grid, np.float64)
        mean, std = predictive.moments()
        b = np.interp(grid, self.grid, self.bias)
        c = np.interp(grid, self.grid, self.spread)
        df = None if predictive.df is None else np.nanmean(predictive.df, axis=0)
        out = np.empty((len(mean), grid.size))
        for j in range(grid.size):
            law = Predictive(np.full(len(mean), grid[j] + b[j]), c[j] * std, df)
            out[:, j] = law.logpdf(mean)
        return out

    def to_dict(self) -> dict:
        return {"bandwidth": self.bandwidth, "examples": self.examples,
                "theta": self.grid[::20].tolist(), "bias": self.bias[::20].tolist(),
                "bias_error": self.bias_error[::20].tolist(), "spread": self.spread[::20].tolist()}


def combine_summaries(predictive: Predictive, likelihood: SummaryLikelihood, prior_range, *,
                      grid_size: int = DEFAULT_GRID, systematic_std: float | None = None) -> PopulationPosterior:
    """The shared value's posterior from the lenses' predictions through `likelihood`
    (uniform population prior over `prior_range`); the same result type as
    `combine_posteriors`.

    `systematic_std` None (default): the calibration's own error, `likelihood.bias_error`
    where all N lenses' posterior lies, integrated out as a shared bias.
    """
    lo, hi = (float(v) for v in prior_range)
    if len(predictive) == 0:
        raise DataError("population inference: no lens to combine")
    grid = np.linspace(lo, hi, int(grid_size))
    per_lens = likelihood.log_likelihood_grid(predictive, grid)
    zeros = np.zeros_like(grid)
    if systematic_std is None:
        centre = summarise(grid, per_lens.sum(axis=0))["mean"]
        systematic_std = float(np.interp(centre, likelihood.grid, likelihood.bias_error))
    return PopulationPosterior(grid=grid, per_lens=per_lens, log_population_prior=zeros, prior_range=(lo, hi),
                               systematic_std=float(systematic_std))


def training_prior_range(run, target: str) -> tuple[tuple[float, float], str]:
    """The training prior's support of `target` and where it was read.

    The preset named in the run's data manifest (its `log10_m_axion_range_ev` for the
    axion mass: the prior the simulator drew from); otherwise the train split's
    min..max from the manifest's `target_stats` (an estimate of the support).
    RunError when neither is there.
    """
    from deeplense_tf.simulation.presets import AXION_TARGET, get_preset

    manifest = getattr(run, "manifest", None) or {}
    preset_name = manifest.get("preset")
    if preset_name and target == AXION_TARGET:
        try:
            preset = get_preset(preset_name)
        except Exception:  # an unknown (newer or custom) preset: fall back to the manifest
            preset = None
        if preset is not None:
            lo, hi = preset.log10_m_axion_range_ev
            return (float(lo), float(hi)), f"uniform, preset {preset_name}"
    stats = (manifest.get("target_stats") or {}).get(target) or {}
    if "min" in stats and "max" in stats:
        return (float(stats["min"]), float(stats["max"])), "uniform, train split min..max"
    raise RunError(
        f"{getattr(run, 'path', 'the run')}: cannot tell the training prior of {target} (no preset "
        f"or target_stats in data_manifest.json); pass --prior-range LO HI"
    )


def infer_population(
    run,
    examples,
    *,
    target: str | None = None,
    tta: bool = False,
    prior_range=None,
    grid_size: int = DEFAULT_GRID,
    batch_size: int = 256,
    edge_correction: bool = True,
    systematic_std: float | None = None,
    likelihood: SummaryLikelihood | None = None,
) -> tuple[dict, PopulationPosterior]:
    """Predict every lens of `examples` with `run` and combine them for `target`.

    With `likelihood` (a `SummaryLikelihood` fitted on labelled predictions of this run)
    the lenses are combined through it (`combine_summaries`) instead of as a product of
    posteriors. `systematic_std` None: none for the product, the calibration's own error
    for `likelihood`.

    Returns `(result, posterior)`: `result` is what population.json holds (target,
    lenses, prior, method, posterior summary, narrowing; the truth when the data set
    gives one value for all lenses, or its spread otherwise).
    """
    target = target or run.targets[0]
    if target not in run.targets:
        raise DataError(f"the run predicts {', '.join(run.targets)}, not {target}")
    if run.head == "point":
        raise RunError(
            f"{getattr(run, 'path', 'the run')}: a point head gives no per-lens posterior; "
            "population inference needs a probabilistic head"
        )
    images = examples.images
    truth = examples.targets.get(target)
    if truth is not None:
        truth = np.asarray(truth, np.float64)
        keep = np.isfinite(truth)
        if not keep.any():
            raise DataError(f"{examples.source}: no example has a value of {target}")
        images, truth = images[keep], truth[keep]
    # Unlabelled data are fine (the combination needs no truth); run.predict checks shapes.
    if images.shape[0] == 0:
        raise DataError(f"{examples.source}: no images")
    if prior_range is None:
        prior_range, prior_source = training_prior_range(run, target)
    else:
        prior_source = "uniform, given"
    prediction = run.predict(images, batch_size=batch_size, tta=tta)[target]
    predictive = Predictive.from_prediction(prediction)
    if likelihood is None:
        posterior = combine_posteriors(predictive, prior_range, grid_size=grid_size,
                                       edge_correction=edge_correction, systematic_std=systematic_std or 0.0)
    else:
        posterior = combine_summaries(predictive, likelihood, prior_range, grid_size=grid_size,
                                      systematic_std=systematic_std)
    result = {
        "data": str(examples.source),
        "target": target,
        "lenses": int(len(predictive)),
        "tta": bool(tta),
        "family": predictive.family,
        "prior": {"kind": "uniform", "range": list(posterior.prior_range), "source": prior_source},
        "method": "product of posteriors" if likelihood is None else "calibrated likelihood",
        "edge_correction": bool(edge_correction) and likelihood is None,
        "systematic_std": float(posterior.systematic_std),
        "grid": int(grid_size),
        **({} if likelihood is None else {"likelihood": likelihood.to_dict()}),
        "posterior": posterior.summary(),
        "narrowing": posterior.narrowing(),
    }
    if truth is not None:
        result["truth"] = {"mean": float(truth.mean()), "min": float(truth.min()),
                           "max": float(truth.max()), "shared": bool(np.ptp(truth) < 1e-9)}
    return result, posterior


def plot_population(result: dict, posterior: PopulationPosterior, path, *, shown_lenses: int = 12):
    """Write the figure: the combined posterior (with a few single-lens ones) and its
    width against the number of lenses, with the 1/sqrt(N) line from one lens."""
    from pathlib import Path

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from deeplense_tf.evaluation.plots import axis_label

    label = axis_label(result["target"])
    truth = (result.get("truth") or {})
    fig = Figure(figsize=(11.0, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    grid = posterior.grid
    for k in range(min(shown_lenses, posterior.lenses)):
        single = np.exp(posterior.per_lens[k] - posterior.per_lens[k].max())
        single /= np.trapezoid(single, grid)
        left.plot(grid, single, color="tab:gray", lw=0.8, alpha=0.6,
                  label="single lenses" if k == 0 else None)
    summary = result["posterior"]
    left.plot(grid, posterior.density(), color="tab:blue", lw=2.0,
              label=f"{posterior.lenses} lenses: {summary['mean']:.3f} ± {summary['std']:.3f}")
    lo95, hi95 = summary["interval_95"]
    left.axvspan(lo95, hi95, color="tab:blue", alpha=0.12, label="95% interval")
    if truth.get("shared"):
        left.axvline(truth["mean"], color="k", ls="--", lw=1.2, label=f"truth {truth['mean']:.3f}")
    left.set_yscale("log")
    top = float(posterior.density().max())
    left.set_ylim(top * 1e-4, top * 2.0)
    left.set_xlabel(label)
    left.set_ylabel("posterior density")
    left.set_title("Combined posterior of the shared value")
    left.legend(loc="best", fontsize=8)

    rows = result["narrowing"]
    counts = np.array([r["n"] for r in rows], np.float64)
    widths = np.array([r["std"] for r in rows])
    right.plot(counts, widths, "o-", color="tab:blue", label="posterior std")
    right.plot(counts, widths[0] / np.sqrt(counts), "k--", lw=1.0, label="std of 1 lens / sqrt(N)")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("lenses combined N")
    right.set_ylabel(f"posterior std of {label}")
    right.set_title("How the posterior narrows as lenses are added")
    right.legend(loc="best", fontsize=8)
    fig.suptitle(f"Population inference on {result['lenses']} lenses of {result['data']}", fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path

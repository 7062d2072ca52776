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
from pathlib import Path

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

    def floor(self, theta: float) -> float:
        """The calibration's own error at `theta` (physical units), shared by every lens."""
        return float(np.interp(theta, self.grid, self.bias_error))

    def to_dict(self) -> dict:
        return {"kind": "validation split, kernel fit", "bandwidth": self.bandwidth, "examples": self.examples,
                "theta": self.grid[::20].tolist(), "bias": self.bias[::20].tolist(),
                "bias_error": self.bias_error[::20].tolist(), "spread": self.spread[::20].tolist()}


#: The default grid of fixed masses a `SimulatedLikelihood` is calibrated on: steps of about
#: 0.04 dex that fall on both edges of the prior, continued 0.2 dex beyond each edge, so the
#: fit at an edge is an interpolation between simulated masses, not an extrapolation.
CALIBRATION_STEP = 0.04
CALIBRATION_MARGIN = 0.2
CALIBRATION_PER_MASS = 1000


def calibration_masses(prior_range, step: float = CALIBRATION_STEP, margin: float = CALIBRATION_MARGIN):
    """`[K]` fixed masses for a calibration set: the prior range cut into equal steps of
    about `step` (both edges among them), extended by `margin` beyond each edge."""
    lo, hi = (float(v) for v in prior_range)
    if not (hi > lo and step > 0 and margin >= 0):
        raise DataError(f"calibration grid: need lo < hi, step > 0, margin >= 0; got {prior_range}, {step}, {margin}")
    count = max(2, round((hi - lo) / step))
    step = (hi - lo) / count
    extra = round(margin / step)
    return np.round(lo + step * np.arange(-extra, count + extra + 1), 6)


def _t_logpdf(residual, scale, df):
    """Log density of `residual` under a Student-t of standard deviation `scale` (df > 2)."""
    t_scale = scale * np.sqrt((df - 2.0) / df)
    return (special.gammaln(0.5 * (df + 1.0)) - special.gammaln(0.5 * df) - 0.5 * np.log(df * np.pi)
            - np.log(t_scale) - 0.5 * (df + 1.0) * np.log1p(np.square(residual / t_scale) / df))


_DF_RANGE = (2.2, 200.0)
#: The fraction of lenses a `SimulatedLikelihood` lets fall outside its fitted law (a flat
#: density over the simulated masses ± 1 dex, which says nothing about θ): rare failures
#: (about 0.4-1% of lenses near the edges, BENCHMARKS.md) are sampled too thinly by 1,000
#: lenses per mass for the t's tails to describe them, and N lenses add up their pull.
OUTLIER_FRACTION = 0.01


def _robust_logpdf(residual, scale, df, outlier: float, log_width: float):
    """`_t_logpdf` mixed with a flat density of weight `outlier` over a span e^log_width."""
    if outlier <= 0:
        return _t_logpdf(residual, scale, df)
    return np.logaddexp(math.log1p(-outlier) + _t_logpdf(residual, scale, df), math.log(outlier) - log_width)


def _fit_mass(mean, x, std, outlier: float, log_width: float):
    """Maximum-likelihood (location, slope, log spread, df) of `mean = a + beta x + c std eps`,
    eps a unit-variance Student-t, for the lenses simulated at one mass."""
    from scipy.optimize import minimize

    design = np.stack([np.ones_like(x), x], axis=1)
    (a0, b0), *_ = np.linalg.lstsq(design, mean, rcond=None)
    c0 = math.log(max(float(np.std((mean - a0 - b0 * x) / std)), 1e-3))
    lo, hi = (math.log(d - 2.0) for d in _DF_RANGE)

    def nll(p):
        a, b, log_c, u = p
        return -float(np.sum(_robust_logpdf(mean - a - b * x, np.exp(log_c) * std, 2.0 + math.exp(u),
                                            outlier, log_width)))

    fit = minimize(nll, [a0, b0, c0, math.log(6.0)], method="L-BFGS-B",
                   bounds=[(None, None), (None, None), (c0 - 5.0, c0 + 5.0), (lo, hi)])
    a, b, log_c, u = fit.x
    return a, b, log_c, 2.0 + math.exp(u)


def _fit_location(mean, x, std, slope, log_spread, df, outlier: float, log_width: float):
    """Maximum-likelihood a (and its standard error) of the same law with the other
    parameters fixed: the location that goes with the smoothed slope, spread and shape."""
    from scipy.optimize import minimize_scalar

    scale = math.exp(log_spread) * std
    centre = float(np.median(mean - slope * x))

    def nll(a):
        return -float(np.sum(_robust_logpdf(mean - a - slope * x, scale, df, outlier, log_width)))

    a = float(minimize_scalar(nll, bounds=(centre - 1.0, centre + 1.0), method="bounded",
                              options={"xatol": 1e-7}).x)
    # The standard error from the curvature of the log-likelihood at its maximum.
    h = 1e-4 * float(np.median(scale))
    curvature = (nll(a + h) - 2.0 * nll(a) + nll(a - h)) / h**2
    return a, float(1.0 / math.sqrt(curvature)) if curvature > 0 else float(np.std(mean) / math.sqrt(mean.size))


def _local_linear(nodes, values, weights, bandwidth):
    """`values` at `nodes` smoothed by local-linear regression (Gaussian kernel); as given for 0."""
    if bandwidth <= 0:
        return np.asarray(values, np.float64)
    dx = nodes[None, :] - nodes[:, None]
    w = weights[None, :] * np.exp(-0.5 * (dx / bandwidth) ** 2)
    s0, s1, s2 = w.sum(1), (w * dx).sum(1), (w * dx**2).sum(1)
    t0, t1 = (w * values).sum(1), (w * dx * values).sum(1)
    return (s2 * t0 - s1 * t1) / (s0 * s2 - s1**2)


@dataclass
class SimulatedLikelihood:
    """The likelihood of a lens's prediction given the shared value, fitted on lenses
    simulated at a grid of fixed masses that includes and brackets the prior's edges.

    The network's output (mean_i, std_i) is a summary statistic of image i. At every
    simulated mass θ_k its conditional law is fitted by maximum likelihood,

        mean_i | std_i, θ_k  ~  a_k + beta_k (log std_i - L) + c_k std_i eps,
                                eps a unit-variance Student-t with df_k,

    (L a fixed reference log std), and the parameters are interpolated linearly in θ
    between the simulated masses: a(θ) as fitted at each mass (the bend where the model
    starts to saturate is what matters at the edges, and smoothing would round it off),
    beta, log c and df smoothed across masses by local-linear regression. No assumption is
    made about how the prediction relates to θ (it can be biased, saturate, or be
    overconfident); the likelihood is what the simulations show. Where the images cannot
    tell masses apart a(θ) is flat and the likelihood with it.

    A fraction `outlier` of lenses may fall outside that law (`OUTLIER_FRACTION`): their
    density is flat over the simulated masses ± 1 dex, the same at every θ.

    Attributes:
        masses: `[K]` simulated masses (physical units), sorted.
        location, slope, log_spread, df: `[K]` a_k, beta_k, log c_k, df_k.
        location_error: `[K]` standard error of a_k (finite simulations). Every lens shares
            it, so N lenses cannot average it away (`floor`).
        reference_log_std: L.
        counts: `[K]` lenses simulated at each mass.
        smooth: the bandwidth (physical units) of the smoothing across masses.
        outlier: the weight of the flat outlier density.
    """

    masses: np.ndarray
    location: np.ndarray
    slope: np.ndarray
    log_spread: np.ndarray
    df: np.ndarray
    location_error: np.ndarray
    reference_log_std: float
    counts: np.ndarray
    smooth: float
    outlier: float = OUTLIER_FRACTION

    @property
    def _log_width(self) -> float:
        return math.log(float(self.masses[-1] - self.masses[0]) + 2.0)

    @classmethod
    def fit(cls, y_true, mean, std, *, smooth: float = 0.12, min_per_mass: int = 50,
            outlier: float = OUTLIER_FRACTION):
        """Fit on labelled predictions (`y_true`, `mean`, `std`, each `[M]`) of lenses
        simulated at fixed masses (`calibration_masses`, `simulate_calibration_set`);
        masses with fewer than `min_per_mass` lenses are left out. DataError when fewer
        than three masses remain (data drawn from a continuous prior: use
        `SummaryLikelihood`)."""
        y, m, sd = (np.asarray(v, np.float64).reshape(-1) for v in (y_true, mean, std))
        ok = np.isfinite(y) & np.isfinite(m) & np.isfinite(sd) & (sd > 0)
        y, m, sd = np.round(y[ok], 6), m[ok], sd[ok]
        values, counts = np.unique(y, return_counts=True)
        keep = counts >= min_per_mass
        if keep.sum() < 3:
            raise DataError(
                f"simulated likelihood: need lenses at three or more fixed masses, {min_per_mass}+ each; got "
                f"{int(keep.sum())} such masses among {values.size} distinct values (calibration_masses, "
                "simulate_calibration_set)"
            )
        masses, counts = values[keep], counts[keep]
        log_sd = np.log(sd)
        reference = float(np.median(log_sd))
        x = log_sd - reference
        if not 0.0 <= outlier < 0.5:
            raise DataError(f"simulated likelihood: outlier fraction must be in [0, 0.5), got {outlier}")
        log_width = math.log(float(masses[-1] - masses[0]) + 2.0)
        rows = np.array([_fit_mass(m[y == v], x[y == v], sd[y == v], outlier, log_width) for v in masses])
        weights = counts.astype(np.float64)
        # The slope, spread and shape vary slowly with θ: smooth them, then refit each mass's
        # location with them fixed (a and the slope are correlated where log std is far from L).
        slope = _local_linear(masses, rows[:, 1], weights, smooth)
        log_spread = _local_linear(masses, rows[:, 2], weights, smooth)
        df = np.clip(2.0 + np.exp(_local_linear(masses, np.log(rows[:, 3] - 2.0), weights, smooth)), *_DF_RANGE)
        location = np.array([_fit_location(m[y == v], x[y == v], sd[y == v], slope[k], log_spread[k], df[k],
                                           outlier, log_width) for k, v in enumerate(masses)])
        return cls(masses=masses, location=location[:, 0], slope=slope, log_spread=log_spread, df=df,
                   location_error=location[:, 1], reference_log_std=reference, counts=counts,
                   smooth=float(smooth), outlier=float(outlier))

    def _at(self, grid):
        return [np.interp(grid, self.masses, v) for v in (self.location, self.slope, self.log_spread, self.df)]

    def log_likelihood_grid(self, predictive: Predictive, grid) -> np.ndarray:
        """`[N, G]`: log p(mean_i | std_i, θ) for every lens and every θ in `grid` (held at
        the outermost simulated masses beyond them)."""
        grid = np.asarray(grid, np.float64)
        mean, std = predictive.moments()
        x = (np.log(std) - self.reference_log_std)[:, None]
        a, b, log_c, df = (v[None, :] for v in self._at(grid))
        out = np.empty((len(mean), grid.size))
        chunk = max(1, 2_000_000 // max(grid.size, 1))
        for start in range(0, len(mean), chunk):
            part = slice(start, start + chunk)
            out[part] = _robust_logpdf(mean[part, None] - a - b * x[part], np.exp(log_c) * std[part, None], df,
                                       self.outlier, self._log_width)
        return out

    def floor(self, theta: float) -> float:
        """The shared error `combine_summaries` integrates out by default: none. With 1,000
        lenses per mass the calibration's own error (`calibration_error`, about 0.002-0.005
        dex) is well below the width of 50 lenses, and integrating it as a shift of the
        truncated posterior drains the density at the prior's edge (BENCHMARKS.md); pass
        `systematic_std` to add it."""
        return 0.0

    def calibration_error(self, theta: float) -> float:
        """The calibration's own error at `theta` in physical units: the standard error of
        a(θ) divided by its slope (where the model saturates, a small error in a moves θ
        far), the slope taken as at least 0.1: where it is flatter the likelihood is flat
        too and far wider than that error."""
        slope = np.gradient(_local_linear(self.masses, self.location, self.counts.astype(np.float64),
                                          self.smooth), self.masses)
        error = float(np.interp(theta, self.masses, self.location_error))
        return float(error / max(abs(float(np.interp(theta, self.masses, slope))), 0.1))

    def to_dict(self) -> dict:
        return {"kind": "simulated at fixed masses", "masses": self.masses.tolist(),
                "examples": int(self.counts.sum()), "smooth": self.smooth, "outlier": self.outlier,
                "location": self.location.tolist(), "location_error": self.location_error.tolist(),
                "slope": self.slope.tolist(), "spread": np.exp(self.log_spread).tolist(), "df": self.df.tolist(),
                "reference_log_std": self.reference_log_std}


def simulate_calibration_set(preset_name: str, path, *, masses=None, per_mass: int = CALIBRATION_PER_MASS,
                             seed: int = 1000, target: str = "log10_m_axion_ev") -> Path:
    """Simulate `per_mass` axion lenses of preset `preset_name` at each of `masses` (default
    `calibration_masses` of the preset's prior) into an `.npz` at `path` (`images`
    `[M, H, W, C]` and `target` `[M]`, readable by `load_examples`); the preset's other
    parameters are drawn as in training. Mass k uses seed `seed + k`."""
    import dataclasses

    from deeplense_tf.simulation.presets import get_preset
    from deeplense_tf.simulation.simulator import simulate_range

    preset = get_preset(preset_name)
    masses = calibration_masses(preset.log10_m_axion_range_ev) if masses is None else np.asarray(masses)
    images, values = [], []
    for k, mass in enumerate(masses):
        fixed = dataclasses.replace(preset, log10_m_axion_range_ev=(float(mass), float(mass)), classes=("axion",))
        for example in simulate_range(fixed, int(seed) + k, 0, int(per_mass)):
            images.append(example["image"].astype(np.float32))
            values.append(example["targets"][target])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=np.stack(images), **{target: np.asarray(values, np.float64)})
    return path


def combine_summaries(predictive: Predictive, likelihood: SummaryLikelihood | SimulatedLikelihood, prior_range, *,
                      grid_size: int = DEFAULT_GRID, systematic_std: float | None = None) -> PopulationPosterior:
    """The shared value's posterior from the lenses' predictions through `likelihood`
    (uniform population prior over `prior_range`); the same result type as
    `combine_posteriors`.

    `systematic_std` None (default): the calibration's own error (`likelihood.floor`)
    where all N lenses' posterior lies, integrated out as a shared bias.
    """
    lo, hi = (float(v) for v in prior_range)
    if len(predictive) == 0:
        raise DataError("population inference: no lens to combine")
    grid = np.linspace(lo, hi, int(grid_size))
    per_lens = likelihood.log_likelihood_grid(predictive, grid)
    zeros = np.zeros_like(grid)
    if systematic_std is None:
        systematic_std = likelihood.floor(summarise(grid, per_lens.sum(axis=0))["mean"])
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
    likelihood: SummaryLikelihood | SimulatedLikelihood | None = None,
) -> tuple[dict, PopulationPosterior]:
    """Predict every lens of `examples` with `run` and combine them for `target`.

    With `likelihood` (a `SummaryLikelihood` or `SimulatedLikelihood` fitted on labelled
    predictions of this run) the lenses are combined through it (`combine_summaries`) instead of as a product of
    posteriors. `systematic_std` None: none for the product, the calibration's own error
    for `likelihood`.

    Returns `(result, posterior)`: `result` is what population.json holds (target,
    lenses, prior, method, posterior summary, narrowing; the truth when the data set
    gives one value for all lenses, or its spread otherwise).
    """
    # Imported here: the rest of this module needs no TensorFlow.
    from deeplense_tf.models.heads import PROBABILISTIC_HEADS

    if run.head not in PROBABILISTIC_HEADS:  # point, softmax (a class), projector (an encoder)
        raise RunError(
            f"{getattr(run, 'path', None) or 'the run'}: a {run.head} head gives no per-lens "
            f"posterior of a target; population inference needs a probabilistic regressor "
            f"({', '.join(PROBABILISTIC_HEADS)})"
        )
    target = target or run.targets[0]
    if target not in run.targets:
        raise DataError(f"the run predicts {', '.join(run.targets)}, not {target}")
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
        "method": ("product of posteriors" if likelihood is None else "simulated likelihood"
                   if isinstance(likelihood, SimulatedLikelihood) else "calibrated likelihood"),
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

"""The predictive distribution a run gives one target, in NumPy: one home for its maths.

The lowest layer (numpy and scipy, no TensorFlow), like `deeplense_tf.intervals`: the
variance calibration (`models/`), `Run.predict`'s consumers in evaluation and the
population inference all read the same distribution through it.

Every probabilistic head predicts, per example, a location-scale distribution with a
finite variance, described by its *mean* and *standard deviation* (the export contract)
plus its shape:

- `gaussian`: N(mean, std²).
- `student_t`: Student's t with `df` > 2 degrees of freedom, located at `mean`, with
  scale `std * sqrt((df - 2) / df)` so that its standard deviation is `std`.

Test-time augmentation (eight D4 views) and deep ensembles make *mixtures*: the
deployed prediction of an image is the equal-weight mixture of the eight views' (or the
M members', or under TTA the 8 x M) distributions. `Predictive` holds K components per
example (`K = 1` for one model without TTA), arrays `[K, N]`, and answers what
evaluation, calibration and population inference need from the actual distribution,
not from a Gaussian fitted to its moments:

- `cdf(y)` and `pit(y)` (probability integral transform). The central interval of
  level p holds y exactly when `|2 F(y) - 1| <= p`, so `central_coverage` needs no
  quantiles and is exact for mixtures.
- `logpdf(y)`, `log_density_grid(grid)` (population inference), `interval(level)`
  (bisection on the mixture's CDF), `moments()` (mixture mean and total std).
- `with_scale(s)`: what post-hoc calibration does to the deployed model (the output
  layer's `log_variance_offset`), so the calibration fit and the deployed prediction are
  the same distribution, with or without TTA: every component's std times `s`. An
  ensemble's calibration scales its members' mixture as a whole (the mixture layer's
  offset multiplies the total variance), so its components come in groups
  (`group_size` = M consecutive components per model evaluation, one group per TTA
  view) that are stretched by `s` about the group's mean.

Units are the target's (physical or standardised: every method is equivariant).
Components whose mean is NaN (a TTA view that cannot be mapped back) carry no weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

#: Distribution families, by head name.
FAMILIES = ("gaussian", "student_t")

_TINY_STD = 1e-300


def _as_components(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[np.newaxis, :]
    if array.ndim != 2:
        raise ValueError(f"{name} must be [N] or [K, N], got shape {array.shape}")
    return array


@dataclass(frozen=True)
class Predictive:
    """Equal-weight mixture of K location-scale components per example.

    Attributes:
        mean: `[K, N]` component means.
        std: `[K, N]` component standard deviations (> 0).
        df: `[K, N]` Student-t degrees of freedom (> 2), or None for Gaussian components.
        group_size: components per calibration group (`with_scale`); K is a multiple of it.
    """

    mean: np.ndarray
    std: np.ndarray
    df: np.ndarray | None = None
    group_size: int = 1

    def __post_init__(self):
        mean = _as_components(self.mean, "mean")
        std = _as_components(self.std, "std")
        if std.shape != mean.shape:
            raise ValueError(f"std has shape {std.shape}, mean {mean.shape}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if self.df is not None:
            df = np.broadcast_to(_as_components(self.df, "df"), mean.shape).astype(np.float64)
            if np.any(df[np.isfinite(mean)] <= 2.0):
                raise ValueError("Student-t components need df > 2 (a finite standard deviation)")
            object.__setattr__(self, "df", df)
        if self.group_size < 1 or mean.shape[0] % self.group_size:
            raise ValueError(f"{mean.shape[0]} components do not split into groups of {self.group_size}")

    # --- construction ---------------------------------------------------------------

    @classmethod
    def from_prediction(cls, prediction: dict) -> Predictive:
        """From one target of `Run.predict`'s output.

        Uses `components` (`{"mean", "std", "df"?, "group_size"?}`, arrays `[K, N]`) when
        present (TTA, ensembles), else `mean`, `std` and `df` (each `[N]`). ValueError
        when there is no std (a point head has no distribution).
        """
        source = prediction.get("components") or prediction
        if source.get("std") is None:
            raise ValueError("a point prediction has no predictive distribution (no std)")
        return cls(source["mean"], source["std"], source.get("df"), int(source.get("group_size", 1)))

    @property
    def family(self) -> str:
        return "gaussian" if self.df is None else "student_t"

    @property
    def components(self) -> int:
        return self.mean.shape[0]

    def __len__(self) -> int:
        return self.mean.shape[1]

    def subset(self, index) -> Predictive:
        """The examples selected by `index` (a boolean mask or integer indices over N)."""
        df = None if self.df is None else self.df[:, index]
        return Predictive(self.mean[:, index], self.std[:, index], df, self.group_size)

    def with_scale(self, scale) -> Predictive:
        """Every component's std multiplied by `scale` (a scalar or `[N]`); with groups,
        their means moved `scale` times as far from their group's mean too (so each
        group's mixture is stretched by `scale` and its variance multiplied by scale²)."""
        scale = np.asarray(scale, np.float64)
        mean = self.mean
        if self.group_size > 1:
            k, n = mean.shape
            grouped = mean.reshape(k // self.group_size, self.group_size, n)
            finite = np.isfinite(grouped)
            # A group that is all NaN (a TTA view that cannot be mapped back) stays NaN.
            centre = (np.where(finite, grouped, 0.0).sum(axis=1, keepdims=True)
                      / np.maximum(finite.sum(axis=1, keepdims=True), 1))
            mean = (centre + scale * (grouped - centre)).reshape(k, n)
        return Predictive(mean, self.std * scale, self.df, self.group_size)

    # --- maths ----------------------------------------------------------------------

    def _weights(self) -> np.ndarray:
        finite = np.isfinite(self.mean) & np.isfinite(self.std)
        count = finite.sum(axis=0, keepdims=True)
        return np.where(finite, 1.0 / np.maximum(count, 1), 0.0)

    def _standardise(self, y):
        """(z, scale) per component: z = (y - mean) / scale, scale the family's own."""
        y = np.asarray(y, dtype=np.float64)
        std = np.maximum(np.nan_to_num(self.std, nan=1.0), _TINY_STD)
        scale = std if self.df is None else std * np.sqrt((self.df - 2.0) / self.df)
        z = (y - np.nan_to_num(self.mean)) / scale
        return z, scale

    def cdf(self, y) -> np.ndarray:
        """P(Y <= y) under each example's mixture; `y` is `[N]` (or broadcasts to it)."""
        z, _ = self._standardise(y)
        part = special.ndtr(z) if self.df is None else special.stdtr(self.df, z)
        return np.sum(self._weights() * part, axis=0)

    def pit(self, y) -> np.ndarray:
        """Probability integral transform `F(y)`, uniform on (0, 1) for a calibrated model."""
        return self.cdf(y)

    def central_coverage(self, y, levels) -> np.ndarray:
        """Fraction of `y` inside each central interval of nominal level in `levels`."""
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if y.size == 0:
            return np.full(len(levels), np.nan)
        distance = np.abs(2.0 * self.cdf(y) - 1.0)
        return np.array([float(np.mean(distance <= level)) for level in levels])

    def _component_logpdf(self, z, scale):
        if self.df is None:
            return -0.5 * np.square(z) - 0.5 * np.log(2.0 * np.pi) - np.log(scale)
        df = self.df
        return (
            special.gammaln(0.5 * (df + 1.0))
            - special.gammaln(0.5 * df)
            - 0.5 * np.log(df * np.pi)
            - np.log(scale)
            - 0.5 * (df + 1.0) * np.log1p(np.square(z) / df)
        )

    def logpdf(self, y) -> np.ndarray:
        """Log density of `y` `[N]` under each example's mixture (nats)."""
        z, scale = self._standardise(y)
        weights = self._weights()
        with np.errstate(divide="ignore"):
            log_w = np.log(weights)
        return special.logsumexp(self._component_logpdf(z, scale) + log_w, axis=0)

    def nll(self, y) -> float:
        """Mean negative log-likelihood of `y` (nats, in the units of `y`)."""
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        return float(-np.mean(self.logpdf(y))) if y.size else float("nan")

    def log_density_grid(self, grid) -> np.ndarray:
        """`[N, G]`: each example's log density at every value of `grid` `[G]`."""
        grid = np.asarray(grid, dtype=np.float64).reshape(-1)
        k, n = self.mean.shape
        out = np.empty((n, grid.size))
        mean = np.nan_to_num(self.mean)[..., None]
        std = np.maximum(np.nan_to_num(self.std, nan=1.0), _TINY_STD)[..., None]
        df = None if self.df is None else self.df[..., None]
        scale = std if df is None else std * np.sqrt((df - 2.0) / df)
        with np.errstate(divide="ignore"):
            log_w = np.log(self._weights())[..., None]
        # Grid chunks of ~4M values of [K, N, chunk] bound the memory.
        chunk = max(1, 4_000_000 // max(k * n, 1))
        for start in range(0, grid.size, chunk):
            z = (grid[None, None, start : start + chunk] - mean) / scale
            if df is None:
                part = -0.5 * np.square(z) - 0.5 * np.log(2.0 * np.pi) - np.log(scale)
            else:
                part = (special.gammaln(0.5 * (df + 1.0)) - special.gammaln(0.5 * df)
                        - 0.5 * np.log(df * np.pi) - np.log(scale)
                        - 0.5 * (df + 1.0) * np.log1p(np.square(z) / df))
            out[:, start : start + chunk] = special.logsumexp(part + log_w, axis=0)
        return out

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mixture mean and standard deviation `[N]` (within-component + between-component)."""
        w = self._weights()
        mean = np.sum(w * np.nan_to_num(self.mean), axis=0)
        spread = np.square(np.nan_to_num(self.mean) - mean)
        second = np.sum(w * (np.square(np.nan_to_num(self.std)) + spread), axis=0)
        return mean, np.sqrt(second)

    def quantile(self, q: float, iterations: int = 80) -> np.ndarray:
        """`[N]` values with `F(value) = q`, by bisection on the mixture's CDF."""
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {q}")
        mean, std = self.moments()
        # Chebyshev: +-10 std holds at least 99% of any finite-variance law; widen the
        # bracket for more extreme q until it holds q.
        lo, hi = mean - 10.0 * std, mean + 10.0 * std
        for _ in range(60):
            bad = (self.cdf(lo) > q) | (self.cdf(hi) < q)
            if not bad.any():
                break
            lo = np.where(bad, mean - 2.0 * (mean - lo), lo)
            hi = np.where(bad, mean + 2.0 * (hi - mean), hi)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            below = self.cdf(mid) < q
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def interval(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Central interval `(lo, hi)` `[N]` holding probability `level`."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"coverage level must be in (0, 1), got {level}")
        return self.quantile(0.5 - level / 2.0), self.quantile(0.5 + level / 2.0)

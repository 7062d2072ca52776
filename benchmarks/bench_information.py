"""How well could *any* regressor do? The oracle's error on the axion mass, per preset.

    python benchmarks/bench_information.py --preset deeplense-model-1 --lenses 48 --seed 7

For each of `--lenses` axion images drawn as the preset draws them (example_rngs(seed, i):
the same parameter and noise streams as `deeplense simulate --seed SEED`), an *oracle*
that knows every parameter of the image except the mass (source position, vortex angle,
exposure: everything the network must infer or marginalise) computes the exact posterior
of log10 m on a grid over the preset's prior:

    log p(m | image) = const - 1/2 sum_pixels [(d - mu_m)^2 / var_m + log var_m]

where d is the noisy image, mu_m the noise-free expected image rendered at mass m with
the true nuisances, and var_m the noise variance per pixel of the preset's noise process
(Model I: 2 mu + (exposure x background_rms)^2, the Gaussian Poisson approximation that
DeepLenseSim adds and then the Poisson draw of it; the `-noisy` and varied presets:
lenstronomy's background and flux noise). The Gaussian form is the Poisson likelihood's
normal approximation (counts of a few and more). A first grid of `--grid` points over
the prior is refined by a second grid of `--refine` points over +-6 posterior stds
around the first's median when the posterior is narrow.

The oracle's posterior-median error is a lower bound on what a network trained on these
images can reach (knowing the nuisances can only help, and the posterior median
minimises the expected absolute error): its MAE over the prior is the floor under any
benchmark MAE of the preset. Noise-free presets (deeplense-model-2/-3 as published) have
no such floor: an exact image determines the mass, so the limit there is the network.

`--bin-pixels K` gives the oracle the image summed over K x K blocks, which tells how much
of the information survives a coarser sampling. Prints the oracle MAE overall and per mass bin, the median posterior std per bin, and
the fraction of lenses whose posterior is wider than half the prior (no information).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deeplense_tf.simulation import physics, simulator  # noqa: E402
from deeplense_tf.simulation.presets import AXION_TARGET, get_preset  # noqa: E402
from deeplense_tf.units import axion_mass_ev  # noqa: E402


def expected_image(preset, params: dict, log10_m: float) -> np.ndarray:
    """The noise-free image (the preset's units) of `params` with the mass set to `log10_m`."""
    q = dict(params)
    q[AXION_TARGET] = float(log10_m)
    q["vortex_half_length_arcsec"] = float(physics.vortex_half_length_arcsec(axion_mass_ev(log10_m)))
    return simulator.render_image(preset, q, None)[:, :, 0].astype(np.float64)


def noise_variance(preset, params: dict, mu: np.ndarray) -> np.ndarray:
    """Per-pixel noise variance of the preset's noise process around the expected image `mu`."""
    if preset.image_mode == "poisson_counts":
        exposure = float({**simulator.fixed_params(preset), **params}["exposure_s"])
        # expected = exposure (model + N(0, model / exposure) + N(0, bg^2)), then Poisson(expected)
        return 2.0 * np.clip(mu, 0.0, None) + (exposure * preset.instrument.background_rms) ** 2 + 1e-6
    if preset.image_mode == "noisy":
        band = simulator.single_band(preset.instrument)
        return band.background_noise ** 2 + band.flux_noise(np.clip(mu, 0.0, None)) ** 2 + 1e-12
    raise SystemExit(f"{preset.name}: image mode {preset.image_mode!r} has no noise, so no "
                     "information floor (an exact image determines the mass)")


def binned(a: np.ndarray, k: int) -> np.ndarray:
    """Sums over k x k pixel blocks (edge rows and columns that do not fill a block dropped):
    counts and independent variances both add."""
    if k == 1:
        return a
    h, w = (a.shape[0] // k) * k, (a.shape[1] // k) * k
    return a[:h, :w].reshape(h // k, k, w // k, k).sum(axis=(1, 3))


def log_likelihood(preset, params, image, grid, bin_px: int = 1) -> np.ndarray:
    out = np.empty(len(grid))
    data = binned(image, bin_px)
    for k, log10_m in enumerate(grid):
        mu = expected_image(preset, params, log10_m)
        var = binned(noise_variance(preset, params, mu), bin_px)
        mu = binned(mu, bin_px)
        out[k] = -0.5 * float(np.sum((data - mu) ** 2 / var + np.log(var)))
    return out


def posterior_summary(grid, log_like) -> tuple[float, float]:
    """(median, std) of the posterior on `grid` (uniform prior), by the trapezoid CDF."""
    weights = np.exp(log_like - log_like.max())
    if len(grid) > 1:
        cells = 0.5 * (weights[1:] + weights[:-1]) * np.diff(grid)
        cdf = np.concatenate([[0.0], np.cumsum(cells)])
        cdf /= cdf[-1]
        median = float(np.interp(0.5, cdf, grid))
    else:
        median = float(grid[0])
    p = weights / weights.sum()
    mean = float(np.sum(p * grid))
    return median, float(math.sqrt(max(np.sum(p * (grid - mean) ** 2), 0.0)))


def oracle(preset, seed: int, index: int, grid_size: int, refine: int, bin_px: int = 1) -> dict:
    params_rng, noise_rng = simulator.example_rngs(seed, index)
    params = simulator.draw_params(preset, params_rng, "axion")
    image = simulator.render_image(preset, params, noise_rng)[:, :, 0].astype(np.float64)
    lo, hi = preset.log10_m_axion_range_ev
    grid = np.linspace(lo, hi, grid_size)
    median, std = posterior_summary(grid, log_likelihood(preset, params, image, grid, bin_px))
    step = grid[1] - grid[0]
    if refine and std < 3 * step:  # narrow: resolve it on a finer grid around the median
        fine = np.linspace(max(lo, median - 6 * max(std, step / 4)), min(hi, median + 6 * max(std, step / 4)), refine)
        median, std = posterior_summary(fine, log_likelihood(preset, params, image, fine, bin_px))
    truth = float(params[AXION_TARGET])
    return {"truth": truth, "median": median, "std": std, "error": abs(median - truth)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="deeplense-model-1")
    parser.add_argument("--lenses", type=int, default=48)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--grid", type=int, default=81)
    parser.add_argument("--refine", type=int, default=41)
    parser.add_argument("--bins", type=int, default=8)
    parser.add_argument("--bin-pixels", type=int, default=1, metavar="K",
                        help="the oracle sees the image summed over K x K pixel blocks: what a "
                             "coarser sampling (a network's polar grid, say) keeps")
    parser.add_argument("--out", help="write the per-lens results as JSON here")
    args = parser.parse_args(argv)

    preset = get_preset(args.preset)
    start = time.perf_counter()
    rows = []
    for i in range(args.lenses):
        rows.append(oracle(preset, args.seed, i, args.grid, args.refine, args.bin_pixels))
        if (i + 1) % 8 == 0:
            done = np.mean([r["error"] for r in rows])
            print(f"  {i + 1}/{args.lenses} lenses, oracle MAE so far {done:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    truth = np.array([r["truth"] for r in rows])
    error = np.array([r["error"] for r in rows])
    std = np.array([r["std"] for r in rows])
    lo, hi = preset.log10_m_axion_range_ev
    edges = np.linspace(lo, hi, args.bins + 1)
    which = np.clip(np.digitize(truth, edges) - 1, 0, args.bins - 1)
    # A posterior as wide as the prior's std (2 dex / sqrt(12) = 0.58) carries no information.
    uninformed = std > 0.5 * (hi - lo) / math.sqrt(12)
    seen = f", {args.bin_pixels}x{args.bin_pixels}-pixel blocks" if args.bin_pixels > 1 else ""
    print(f"{args.preset}{seen}: oracle posterior-median MAE {error.mean():.4f} dex "
          f"(median error {np.median(error):.4f}; {args.lenses} lenses, seed {args.seed}; "
          f"{uninformed.mean():.0%} with a posterior wider than half the prior's std; "
          f"{time.perf_counter() - start:.0f} s)")
    print("| bin of log10 m | lenses | oracle MAE | median posterior std |")
    print("|---|---:|---:|---:|")
    for b in range(args.bins):
        chosen = which == b
        if chosen.any():
            print(f"| {edges[b]:.2f} .. {edges[b + 1]:.2f} | {int(chosen.sum())} | "
                  f"{error[chosen].mean():.4f} | {np.median(std[chosen]):.4f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"preset": args.preset, "seed": args.seed, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

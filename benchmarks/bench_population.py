"""Population inference on lenses that all share one axion mass: coverage, width vs N, edge bias.

    python benchmarks/bench_population.py --run RUN --work /work/p-pop \
        --masses -24.0 -23.5 -23.0 -22.5 -22.0 -23.9 -22.1 --sets 100 --lenses 50 --seed 11 \
        [--variants "calibrated likelihood" "simulated likelihood"]

For each mass m in `--masses`, simulates `--sets * --lenses` axion images of the run's
preset with log10 m fixed at m (the preset's prior range collapsed to (m, m) through the
Python API; every other parameter drawn as in training) into WORK/pool_<m>.npz (reused
when there), predicts them once with the run, and splits them into `--sets` disjoint sets
of `--lenses`. Each set is combined with `deeplense_tf.evaluation.population` (uniform
training prior of the preset divided out) seven ways: the plain product of the per-lens
posteriors; with the edge correction (the truncation at the prior's edges undone); with
the edge correction plus the model's systematic floor (`systematic_floor` measured on the
run's validation split, integrated out as a bias shared by all lenses); and through the
likelihood of the predictions calibrated on the validation split (`SummaryLikelihood`:
the model's bias and std scale at each mass), without and with its own floor (the
standard error of the calibrated bias, shared by all lenses; `combine_summaries`'
default); and through the likelihood fitted on lenses simulated at a grid of fixed
masses that includes and brackets the prior's edges (`SimulatedLikelihood`;
`--calibration-*`: by default 1,000 lenses every 0.04 dex from 0.2 dex below to 0.2 dex
above the prior, seeds 1000, 1001, ..., cached in WORK/calib/), without (its default)
and with its calibration error as a floor. The run's predictions of every pool are
cached in WORK/predictions/<run>/ (refreshed when model.keras is newer). `--variants`
picks combinations by name. Reported per mass and combination:

- how often the 68% / 95% intervals of the combined posterior hold m (nominal 0.68 /
  0.95; the binomial standard error over 100 sets is 0.047 / 0.022), equal-tailed and
  highest-density (only the latter can reach a mass exactly at the prior's edge);
- the bias (mean of posterior mean - m), the bias and median error of the MAP, and the
  mean posterior std at N = `--lenses`;
- width vs N: the mean posterior std and the root-mean-square error of the posterior mean
  for N = 1, 2, 4, ..., and, from the whole pool in larger disjoint chunks, up to
  `--max-n` lenses, where the model's systematic error (the bias at that mass) sets
  the floor: the std keeps shrinking as 1/sqrt(N), the error stops at |bias|.

Prints Markdown tables (for BENCHMARKS.md) and writes WORK/population_benchmark_<run>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def simulate_pool(preset, mass: float, count: int, seed: int, path: Path, workers: int) -> dict:
    """`count` images with log10 m fixed at `mass` -> {"images" [N,H,W,1], "truth" [N]}; cached."""
    if path.is_file():
        data = np.load(path)
        made_with = int(data["seed"]) if "seed" in data else seed  # pools of the first run lack it
        if len(data["truth"]) >= count and made_with == seed:
            return {"images": data["images"][:count], "truth": data["truth"][:count]}
    from deeplense_tf.simulation.simulator import simulate_range

    fixed = dataclasses.replace(preset, log10_m_axion_range_ev=(mass, mass), classes=("axion",))
    start = time.perf_counter()
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        chunks = np.array_split(np.arange(count), workers * 4)
        with ProcessPoolExecutor(workers) as pool:
            parts = pool.map(simulate_range, [fixed] * len(chunks), [seed] * len(chunks),
                             [int(c[0]) for c in chunks], [int(c[-1]) + 1 for c in chunks])
            examples = [e for part in parts for e in part]
    else:
        examples = simulate_range(fixed, seed, 0, count)
    images = np.stack([e["image"] for e in examples]).astype(np.float32)
    truth = np.array([e["targets"]["log10_m_axion_ev"] for e in examples], np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, truth=truth, seed=seed)
    print(f"simulated {count} images at log10 m = {mass} in {time.perf_counter() - start:.0f} s -> {path}",
          file=sys.stderr)
    return {"images": images, "truth": truth}


def predict_pool(run, run_path: str, pool: dict, cache: Path, tta: bool):
    """The run's `Predictive` for a pool's images, cached in `cache` (an .npz per pool and
    run: the pools are fixed, and predicting them is most of the benchmark's time)."""
    from deeplense_tf.predictive import Predictive
    from deeplense_tf.simulation.presets import AXION_TARGET

    if cache.is_file() and cache.stat().st_mtime >= Path(run_path, "model.keras").stat().st_mtime:
        data = np.load(cache)
        if data["mean"].shape[-1] == len(pool["truth"]):
            return Predictive(data["mean"], data["std"], data["df"] if "df" in data else None)
    predictive = Predictive.from_prediction(run.predict(pool["images"], batch_size=256, tta=tta)[AXION_TARGET])
    cache.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if predictive.df is None else {"df": predictive.df}
    np.savez(cache, mean=predictive.mean, std=predictive.std, **extra)
    return predictive


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="trained run folder (Gaussian or Student-t head)")
    parser.add_argument("--work", default="/work/p-pop", help="folder for the simulated pools and the result")
    parser.add_argument("--masses", type=float, nargs="+", default=[-24.0, -23.5, -23.0, -22.5, -22.0],
                        help="shared log10 m values to test (default: across the range, edges included)")
    parser.add_argument("--sets", type=int, default=100, help="repeated sets per mass (default 100)")
    parser.add_argument("--lenses", type=int, default=50, help="lenses per set (default 50)")
    parser.add_argument("--max-n", type=int, default=1000, help="largest N of the width-vs-N table")
    parser.add_argument("--seed", type=int, default=11,
                        help="simulation seed of the first mass in --masses (+1 for each next one)")
    parser.add_argument("--workers", type=int, default=1, help="simulation processes")
    parser.add_argument("--grid", type=int, default=4001, help="grid points over the prior range")
    parser.add_argument("--tta", action="store_true", help="per-lens posteriors from the 8-view mixture")
    parser.add_argument("--variants", nargs="+", metavar="NAME",
                        help="combinations to run (default: all); names as in the tables")
    parser.add_argument("--calibration-per-mass", type=int, default=1000,
                        help="lenses per fixed mass of the simulated likelihood's calibration grid")
    parser.add_argument("--calibration-step", type=float, default=0.04, help="spacing of that grid (dex)")
    parser.add_argument("--calibration-margin", type=float, default=0.2,
                        help="how far the grid continues beyond each edge of the prior (dex)")
    parser.add_argument("--calibration-seed", type=int, default=1000,
                        help="simulation seed of the grid's first mass (+1 for each next one)")
    args = parser.parse_args(argv)

    from deeplense_tf.data import load_examples
    from deeplense_tf.evaluation.population import (
        PopulationPosterior,
        SimulatedLikelihood,
        SummaryLikelihood,
        calibration_masses,
        likelihood_from_posterior,
        summarise,
        systematic_floor,
        training_prior_range,
    )
    from deeplense_tf.runs.run import Run
    from deeplense_tf.simulation.presets import AXION_TARGET, get_preset

    run = Run.load(args.run)
    preset = get_preset((run.manifest or {})["preset"])
    prior_range, prior_source = training_prior_range(run, AXION_TARGET)
    grid = np.linspace(*prior_range, args.grid)
    work = Path(args.work)
    per_set = args.sets * args.lenses
    started = time.perf_counter()

    # The model's systematic error, measured on the validation split (never on the pools).
    val = load_examples(run.data_path(None), split="val")
    keep = np.isfinite(val.targets[AXION_TARGET])
    val_pred = run.predict(val.images[keep], batch_size=256, tta=args.tta)[AXION_TARGET]
    floor = systematic_floor(val.targets[AXION_TARGET][keep], val_pred["mean"])
    print(f"systematic floor on {int(keep.sum())} validation lenses: {floor:.4f} dex", file=sys.stderr)
    calibration = SummaryLikelihood.fit(val.targets[AXION_TARGET][keep], val_pred["mean"], val_pred["std"],
                                        prior_range)
    tag = Path(args.run).name + ("-tta" if args.tta else "")
    # The simulated likelihood's calibration: lenses at a grid of fixed masses that includes
    # and brackets the prior's edges, simulated with other seeds than the pools.
    masses = calibration_masses(prior_range, args.calibration_step, args.calibration_margin)
    truths, means, stds = [], [], []
    for k, mass in enumerate(masses):
        pool = simulate_pool(preset, float(mass), args.calibration_per_mass, args.calibration_seed + k,
                             work / "calib" / f"pool_{mass:+.2f}.npz", args.workers)
        moments = predict_pool(run, args.run, pool, work / "predictions" / tag / f"calib_{mass:+.2f}.npz",
                               args.tta).moments()
        truths.append(pool["truth"])
        means.append(moments[0])
        stds.append(moments[1])
    simulated = SimulatedLikelihood.fit(np.concatenate(truths), np.concatenate(means), np.concatenate(stds))
    print(f"simulated likelihood fitted on {int(simulated.counts.sum())} lenses at {len(masses)} masses "
          f"{masses[0]:+.2f}..{masses[-1]:+.2f}", file=sys.stderr)

    def floor_of(likelihood):  # what combine_summaries integrates out by default
        return lambda rows: likelihood.floor(summarise(grid, rows.sum(axis=0))["mean"])

    # name: (per-lens log densities on the grid, set rows -> shared systematic std)
    variants = {
        "product": ("posterior", lambda rows: 0.0),
        "edge-corrected": ("corrected", lambda rows: 0.0),
        "edge-corrected + floor": ("corrected", lambda rows: floor),
        "calibrated likelihood, no floor": ("calibrated", lambda rows: 0.0),
        "calibrated likelihood": ("calibrated", floor_of(calibration)),
        "simulated likelihood": ("simulated", floor_of(simulated)),  # its default: no floor
        "simulated likelihood + calibration error": (
            "simulated", lambda rows: simulated.calibration_error(summarise(grid, rows.sum(axis=0))["mean"])),
    }
    if args.variants:
        unknown = sorted(set(args.variants) - set(variants))
        if unknown:
            parser.error(f"unknown --variants {', '.join(unknown)}; choose from {', '.join(variants)}")
        variants = {k: v for k, v in variants.items() if k in args.variants}
    densities = {
        "posterior": lambda p: p.log_density_grid(grid),
        "corrected": lambda p: likelihood_from_posterior(p, prior_range).log_density_grid(grid),
        "calibrated": lambda p: calibration.log_likelihood_grid(p, grid),
        "simulated": lambda p: simulated.log_likelihood_grid(p, grid),
    }
    rows, widths = [], []
    for k, mass in enumerate(args.masses):
        pool = simulate_pool(preset, mass, per_set, args.seed + k, work / f"pool_{mass:+.2f}.npz", args.workers)
        predictive = predict_pool(run, args.run, pool, work / "predictions" / tag / f"pool_{mass:+.2f}.npz",
                                  args.tta)
        single = predictive.moments()[0] - mass
        zeros = np.zeros_like(grid)
        cache = {}
        for name, (kind, systematic) in variants.items():
            if kind not in cache:
                cache[kind] = densities[kind](predictive)  # [pool, G], once; sets pick rows
            log_density = cache[kind]

            def posterior(index, log_density=log_density, systematic=systematic, zeros=zeros):
                rows = log_density[index]
                return PopulationPosterior(grid, rows, zeros, prior_range, systematic(rows))

            hits68 = hits95 = hdi68 = hdi95 = 0
            errors, map_errors, stds, narrowing = [], [], [], {}
            for s in range(args.sets):
                post = posterior(np.arange(s * args.lenses, (s + 1) * args.lenses))
                summary = post.summary()
                hits68 += summary["interval_68"][0] <= mass <= summary["interval_68"][1]
                hits95 += summary["interval_95"][0] <= mass <= summary["interval_95"][1]
                hdi68 += summary["hdi_68"][0] <= mass <= summary["hdi_68"][1]
                hdi95 += summary["hdi_95"][0] <= mass <= summary["hdi_95"][1]
                errors.append(summary["mean"] - mass)
                map_errors.append(summary["map"] - mass)
                stds.append(summary["std"])
                for row in post.narrowing():
                    narrowing.setdefault(row["n"], []).append((row["mean"] - mass, row["std"]))
            # Larger N from the whole pool in disjoint chunks (fewer repeats as N grows).
            for n in (100, 200, 500, 1000, 2000, 5000):
                if not args.lenses < n <= min(args.max_n, per_set):
                    continue
                for c in range(per_set // n):
                    summary = posterior(np.arange(c * n, (c + 1) * n)).summary()
                    narrowing.setdefault(n, []).append((summary["mean"] - mass, summary["std"]))
            rows.append({
                "variant": name, "mass": mass, "sets": args.sets, "lenses": args.lenses,
                "coverage_68": hits68 / args.sets, "coverage_95": hits95 / args.sets,
                "hdi_coverage_68": hdi68 / args.sets, "hdi_coverage_95": hdi95 / args.sets,
                "bias": float(np.mean(errors)), "rmse": float(np.sqrt(np.mean(np.square(errors)))),
                "map_bias": float(np.mean(map_errors)), "map_median_error": float(np.median(map_errors)),
                "mean_std": float(np.mean(stds)), "single_lens_mae": float(np.mean(np.abs(single))),
                "single_lens_bias": float(np.mean(single)),
            })
            for n_lenses, values in sorted(narrowing.items()):
                e = np.array([v[0] for v in values])
                widths.append({"variant": name, "mass": mass, "n": int(n_lenses), "repeats": len(values),
                               "mean_std": float(np.mean([v[1] for v in values])),
                               "rmse": float(np.sqrt(np.mean(e**2))), "bias": float(np.mean(e))})
            r = rows[-1]
            print(f"log10 m = {mass:+.2f} {name}: 68% {r['coverage_68']:.2f}, 95% {r['coverage_95']:.2f}, "
                  f"bias {r['bias']:+.4f}, std {r['mean_std']:.4f}", file=sys.stderr)

    print(f"\nrun {args.run} ({run.head} head{', TTA' if args.tta else ''}); prior {prior_source} "
          f"{list(prior_range)}; {args.sets} disjoint sets of {args.lenses} lenses per mass; systematic "
          f"floor {floor:.4f} dex (val split); {time.perf_counter() - started:.0f} s\n")
    print("| combination | shared log10 m | 68% cov. | 95% cov. | 68% / 95% cov. (HDI) | bias of mean (dex) "
          "| RMSE of mean | bias of MAP / median MAP error | mean post. std | single-lens MAE | single-lens bias |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (list(variants).index(r["variant"]), r["mass"])):
        print(f"| {r['variant']} | {r['mass']:+.2f} | {r['coverage_68']:.2f} | {r['coverage_95']:.2f} "
              f"| {r['hdi_coverage_68']:.2f} / {r['hdi_coverage_95']:.2f} "
              f"| {r['bias']:+.4f} | {r['rmse']:.4f} | {r['map_bias']:+.4f} / {r['map_median_error']:+.4f} "
              f"| {r['mean_std']:.4f} | {r['single_lens_mae']:.3f} | {r['single_lens_bias']:+.3f} |")
    for name in variants:
        chosen = [w for w in widths if w["variant"] == name]
        counts = sorted({w["n"] for w in chosen})
        print(f"\n{name}: mean posterior std / RMSE of the posterior mean (dex) vs lenses combined N:\n")
        print("| shared log10 m | " + " | ".join(f"N={n}" for n in counts) + " |")
        print("|---|" + "---|" * len(counts))
        for mass in args.masses:
            cells = {w["n"]: f"{w['mean_std']:.4f} / {w['rmse']:.4f}" for w in chosen if w["mass"] == mass}
            print(f"| {mass:+.2f} | " + " | ".join(cells.get(n, "") for n in counts) + " |")
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"population_benchmark_{tag}.json"
    out.write_text(json.dumps({"run": str(args.run), "head": run.head, "tta": args.tta, "floor": floor,
                               "simulated_likelihood": simulated.to_dict(),
                               "prior_range": list(prior_range), "rows": rows, "widths": widths},
                              indent=2) + "\n")
    print(f"\nwrote {out}", file=sys.stderr)
    return 0 if all(math.isfinite(r["bias"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

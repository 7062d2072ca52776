"""`deeplense ensemble`: combine trained runs into one ensemble run.

    deeplense ensemble --runs RUN1 RUN2 [RUN3 ...] --out RUN [--overwrite]

The ensemble's Gaussian output is the equal-weight mixture of its members: mean of the
means, variance = mean of the variances + variance of the means, then rescaled on the
validation split (unless --no-calibrate). The result is an
ordinary run folder: `deeplense evaluate --run RUN`, `deeplense export --run RUN` and
`deeplense predict --run RUN` use it like any other.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="+", required=True, metavar="RUN",
                        help="finished run folders (same targets and image shape; any architectures)")
    parser.add_argument("--out", required=True, metavar="RUN", help="the ensemble's run folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="keep the plain mixture's stds (default: calibrate them on the val split "
                        "of the first member's data)")


def run(args) -> int:
    from deeplense_tf.training.ensemble import ensemble_runs

    result = ensemble_runs(args.runs, args.out, overwrite=args.overwrite, calibrate=not args.no_calibrate)
    paths = result.paths
    for path in (paths.model, paths.config, paths.target_stats, paths.manifest, paths.info, paths.metrics):
        if path.exists():
            print(f"wrote {path}")
    fits = result.calibration
    if fits:
        for target, fit in fits["targets"].items():
            print(f"{target}: mixture stds x {fit['scale']:.3f} (val 68% coverage "
                  f"{fit['coverage_68_before']:.3f} -> {fit['coverage_68_after']:.3f})")
    elif not args.no_calibrate:
        print("stds not calibrated: the members' data is not here (deeplense calibrate --run "
              f"{result.path} --data PATH does it later)")
    print(f"ensemble of {len(args.runs)} runs ready: {result.path} "
          f"(evaluate with: deeplense evaluate --run {result.path})")
    return 0

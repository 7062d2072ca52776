"""`deeplense ensemble`: combine trained runs into one ensemble run.

    deeplense ensemble --runs RUN1 RUN2 [RUN3 ...] --out RUN [--overwrite]

The ensemble's Gaussian output is the equal-weight mixture of its members: mean of the
means, variance = mean of the variances + variance of the means. The result is an
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


def run(args) -> int:
    from deeplense_tf.training.ensemble import ensemble_runs

    result = ensemble_runs(args.runs, args.out, overwrite=args.overwrite)
    for name in ("model.keras", "config.yaml", "target_stats.json", "data_manifest.json", "run.json"):
        if (result.path / name).exists():
            print(f"wrote {result.path / name}")
    print(f"ensemble of {len(args.runs)} runs ready: {result.path} "
          f"(evaluate with: deeplense evaluate --run {result.path})")
    return 0

"""Tuned vs default hyperparameters at equal training budget on deeplense-model-2: test MAE
of the base config and of the best trial of a `deeplense tune` search, each trained once
more for the same epochs, printed as a markdown table.

    python benchmarks/bench_tuning.py --num 20000 --model resnet --config quickstart \
        --tuner bayesian --max-trials 20 --trial-epochs 10 --epochs 40 --workers 2
    python benchmarks/bench_tuning.py --smoke            # seconds: checks that it runs

Steps (each reused when already done):
1. WORK/data: `--num` images of `--preset` (or `--data DIR`, an existing data set).
2. WORK/search: the search (`--tuner`, `--max-trials`, each trial `--trial-epochs` epochs;
   `--space` or the family's built-in space) over the base config (`--config`, `--model`).
   Each trial is a `deeplense train` run (WORK/search/search/trial_<id>/), scored on the
   model that run saved (BatchNorm re-estimated, stds calibrated).
3. WORK/default and WORK/tuned: the base config and the best trial's config, both trained
   for `--epochs` (and `--time-budget-minutes`, if given) with the same seed, steps and
   validation, scored on the test split. The search's own cost is reported beside them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ensemble import (  # noqa: E402  (shared benchmark helpers)
    common_arguments,
    make_config,
    markdown_table,
    print_header,
    simulate,
    test_scores,
    train_once,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser, "bench_work/tuning")
    parser.add_argument("--preset", default="deeplense-model-2")
    parser.add_argument("--num", type=int, default=20000, help="images to simulate (default 20000)")
    parser.add_argument("--data", help="an existing simulated data folder to use instead of simulating")
    parser.add_argument("--tuner", default="bayesian", choices=("random", "hyperband", "bayesian"))
    parser.add_argument("--max-trials", type=int, default=20)
    parser.add_argument("--trial-epochs", type=int, default=10, help="epochs of each search trial (default 10)")
    parser.add_argument("--space", help="search-space YAML (default: the family's built-in space)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.num = min(args.num, 100)
        args.max_trials = min(args.max_trials, 2)
        args.trial_epochs = min(args.trial_epochs, 1)

    import pandas as pd

    from deeplense_tf.data import load_examples
    from deeplense_tf.training.config import diff_configs, get_dotted
    from deeplense_tf.training.tuning import tune

    work = Path(args.work)
    start = time.perf_counter()
    data = Path(args.data) if args.data else simulate(args.preset, args.num, work / "data", workers=args.workers)
    default = make_config(args, data, seed=0)
    search_start = time.perf_counter()
    result = tune(data, work / "search", model=default["model"]["name"], tuner=args.tuner,
                  max_trials=args.max_trials, space=args.space, epochs=args.trial_epochs,
                  overrides=default, seed=0)
    search_seconds = time.perf_counter() - search_start
    if result.best_config is None:
        print("no trial of the search finished; see", work / "search", file=sys.stderr)
        return 1
    trials = pd.read_csv(work / "search" / "results.csv")
    searched_seconds = float(trials["seconds"].sum())

    # The same final budget for both: epochs, time budget, steps, validation and seed of the
    # base config (a space may shorten them for its trials).
    same = {f"training.{k}": default["training"][k] for k in _BUDGET_KEYS}
    tuned = make_config(args, data, **{**result.best_config, "seed": 0, **same})
    default_run, default_seconds = train_once(default, work / "default")
    tuned_run, tuned_seconds = train_once(tuned, work / "tuned")
    examples = load_examples(str(data), split="test")
    target = default_run.targets[0]
    a, b = test_scores(default_run, examples, target), test_scores(tuned_run, examples, target)

    changed = [k for k in diff_configs(default, tuned) if not k.startswith("data.")]
    print_header(f"Tuned vs default hyperparameters at equal budget ({args.preset}, {target})", args)
    print(f"{data} ({len(examples.images)} test images); search: {args.tuner}, {len(trials)} trials of "
          f"{args.trial_epochs} epochs, objective {result.objective}, {searched_seconds / 60:.1f} min of trials "
          f"({search_seconds / 60:.1f} min wall this run); final runs {default['training']['epochs']} epochs each; "
          f"total {(time.perf_counter() - start) / 60:.1f} min.\n")
    default_name = args.config or ("smoke" if args.smoke else "quickstart")
    rows = [[f"default ({default_name})", a, default_seconds],
            [f"tuned (trial {result.best_trial_id})", b, tuned_seconds]]
    print(markdown_table(
        ["config", "test MAE", "test NLL", "68% coverage", "95% coverage", "train s"],
        [[name, s["mae"], s["nll"], s["coverage_68"], s["coverage_95"], sec] for name, s, sec in rows],
    ))
    print("\nTuned settings that differ from the default: " + (", ".join(
        f"{k} = {get_dotted(tuned, k)!r} (default {get_dotted(default, k)!r})" for k in changed) or "none") + ".")
    return 0


_BUDGET_KEYS = ("epochs", "time_budget_minutes", "steps_per_epoch", "validation_steps",
                "bn_recalibration_batches")


if __name__ == "__main__":
    sys.exit(main())

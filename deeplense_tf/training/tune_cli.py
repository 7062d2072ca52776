"""`deeplense tune`: hyperparameter search with KerasTuner.

    deeplense tune --data DIR --out DIR [--tuner random|hyperband|bayesian] [--max-trials N]
        [--space FILE] [--model NAME] [--epochs E] [--objective METRIC] [--config FILE]
        [--seed S] [--smoke] [--overwrite] [--set KEY=VALUE ...]

Search spaces are YAML files (`tuning/<family>.yaml`; without --space the family's
built-in space, the same as that file). Each trial is a `deeplense train` run into
DIR/search/trial_<id>/, a run folder that `deeplense evaluate`, `export` and `cluster`
take. Writes DIR/results.csv (one row per trial), DIR/scores.png and
DIR/best_config.yaml, which `deeplense train --config` takes as it is.
Running the same command again resumes: finished trials are kept, --max-trials counts
them. Distributed search: see tuning/launch_distributed.sh.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR", help="simulated data directory (manifest + shards)")
    parser.add_argument("--out", required=True, metavar="DIR", help="search folder to write (or resume)")
    parser.add_argument("--tuner", default="random", choices=("random", "hyperband", "bayesian"),
                        help="search algorithm (default: random)")
    parser.add_argument("--max-trials", type=int, default=10, metavar="N",
                        help="trials in all, finished ones of a resumed search included (default: 10); "
                        "for hyperband a cap on its brackets")
    parser.add_argument("--space", metavar="FILE", help="search-space YAML (default: the model family's built-in space)")
    parser.add_argument("--model", metavar="NAME", help="model family (default: the space file's, else resnet)")
    parser.add_argument("--epochs", type=int, metavar="E",
                        help="epochs of every trial (hyperband: the largest budget); default: the space's")
    parser.add_argument("--objective", metavar="METRIC",
                        help="validation metric to minimise (default: val NLL of the first target when "
                        "every trial has the Gaussian or Student-t head, else its val MAE; a "
                        "classifier's val_loss, or val_error)")
    parser.add_argument("--config", metavar="FILE", help="base experiment config (YAML or packaged preset)")
    parser.add_argument("--seed", type=int, metavar="S", help="experiment and tuner seed")
    parser.add_argument("--smoke", action="store_true", help="shrink every trial to seconds (a check, not a result)")
    parser.add_argument("--overwrite", action="store_true", help="delete a previous search in --out first")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a base-config key, e.g. --set model.crop=48 (repeatable)")


def run(args) -> int:
    from deeplense_tf.training.train_cli import parse_set_options
    from deeplense_tf.training.tuning import tune

    result = tune(
        args.data,
        args.out,
        model=args.model,
        tuner=args.tuner,
        max_trials=args.max_trials,
        space=args.space,
        epochs=args.epochs,
        smoke=args.smoke,
        config=args.config,
        overrides=parse_set_options(args.set),
        objective=args.objective,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    if result.table is None:  # a distributed worker: the chief reports
        return 0
    print(f"{result.new_trials} new trials, {len(result.table)} in all; objective {result.objective}")
    for key in ("results", "plot", "best_config"):
        if key in result.paths:
            print(f"wrote {result.paths[key]}")
    if result.best_config is not None:
        print(f"best trial {result.best_trial_id}, a run folder: {result.paths['best_run']}; "
              f"train it again with: deeplense train --config {result.paths['best_config']} --out RUN")
    return 0

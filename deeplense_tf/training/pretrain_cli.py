"""`deeplense pretrain`: self-supervised pretraining of an encoder on unlabelled images.

    deeplense pretrain --data DIR --model NAME --out RUN [--config FILE] [--epochs E]
        [--batch-size B] [--seed S] [--overwrite] [--smoke] [--set KEY=VALUE ...]

Every image of the data set's train split is used, whatever its class; the labels are not
read. The options work as for `deeplense train` (the config is training's plus a
`pretrain` section: objective, projector, loss weights, views); the resolved config goes
to RUN/config.yaml, and running the same command again after an interruption resumes it.
The run folder is read by `deeplense cluster --run RUN` and by
`deeplense train --init-from RUN` (or `--set training.init_from=RUN`).
"""

from __future__ import annotations

import argparse

from deeplense_tf.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR",
                        help="simulated data directory (manifest + shards); its labels are not "
                             "read; sets data.path")
    parser.add_argument("--twin-data", metavar="DIR",
                        help="the source twin of --data (the same `deeplense simulate` command "
                             "plus --source-seed K): the second view of each image is its twin, "
                             "one lens lensing another source; sets pretrain.twin_data")
    parser.add_argument("--model", metavar="NAME",
                        help="encoder architecture (cnn, resnet, efficientnet, vit, cnn_lstm); "
                             "sets model.name")
    parser.add_argument("--out", required=True, metavar="RUN", help="run folder to write (or resume)")
    parser.add_argument("--config", metavar="FILE",
                        help="pretraining config YAML (training's keys plus a pretrain section)")
    parser.add_argument("--epochs", type=int, metavar="E", help="sets training.epochs")
    parser.add_argument("--batch-size", type=int, metavar="B",
                        help="global batch size (images; each gives two views); sets training.batch_size")
    parser.add_argument("--seed", type=int, metavar="S",
                        help="sets seed (initialisation, shuffling, views)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished (or other) run in --out instead of refusing")
    parser.add_argument("--smoke", action="store_true",
                        help="shrink everything to seconds (a check, not a result)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set pretrain.views.noise_std=0.2 "
                             "or --set training.time_budget_minutes=30 (repeatable)")


def build_overrides(args) -> dict:
    from deeplense_tf.training.train_cli import common_overrides

    return common_overrides(args, {"pretrain.twin_data": args.twin_data})


def run(args) -> int:
    from deeplense_tf.training.pretrain import load_pretrain_config

    config = load_pretrain_config(args.config, build_overrides(args))
    if not config["data"]["path"]:
        raise ConfigError("no data set: give --data DIR (or data.path in the --config file)")

    from deeplense_tf.training.pretrain import pretrain

    result = pretrain(config, args.out, overwrite=args.overwrite)
    if result.path is not None:
        print(f"encoder ready: {result.path} (cluster with: deeplense cluster --run {result.path} "
              f"--data DIR --out OUT; fine-tune with: deeplense train --init-from {result.path} "
              "--data DIR --out RUN)")
    return 0

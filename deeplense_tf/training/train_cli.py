"""`deeplense train`: train a regressor into a run folder.

    deeplense train --data DIR --model NAME --out RUN [--config FILE] [--epochs E]
        [--batch-size B] [--seed S] [--init-from RUN] [--freeze-encoder-epochs K]
        [--overwrite] [--smoke] [--set KEY=VALUE ...]

Options on the command line override the config file (`--config`, a YAML file or a
packaged preset: default, quickstart, smoke). The resolved config is written to
RUN/config.yaml, so `deeplense train --config RUN/config.yaml --out RUN2` repeats the run.
Running the same command again after an interruption resumes it.

With `--init-from RUN0` and no `--config`, the model settings (architecture, options,
head, normalisation, crop) and the targets come from RUN0, so only the data differ.
"""

from __future__ import annotations

import argparse

from deeplense_tf.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", help="simulated data directory (manifest + shards); sets data.path")
    parser.add_argument("--model", metavar="NAME", help="model name (cnn, resnet, efficientnet, vit, cnn_lstm); sets model.name")
    parser.add_argument("--out", required=True, metavar="RUN", help="run folder to write (or resume)")
    parser.add_argument("--config", metavar="FILE",
                        help="experiment config YAML, or a packaged preset name (default, quickstart, smoke)")
    parser.add_argument("--epochs", type=int, metavar="E", help="sets training.epochs")
    parser.add_argument("--batch-size", type=int, metavar="B", help="global batch size; sets training.batch_size")
    parser.add_argument("--seed", type=int, metavar="S", help="sets seed (initialisation, shuffling, augmentation)")
    parser.add_argument("--init-from", metavar="RUN",
                        help="fine-tune: start from this finished run's weights (sets training.init_from)")
    parser.add_argument("--freeze-encoder-epochs", type=int, metavar="K",
                        help="with --init-from: train only the head for the first K epochs")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished (or other) run in --out instead of refusing")
    parser.add_argument("--smoke", action="store_true", help="shrink everything to seconds (a check, not a result)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set training.learning_rate=3e-4 (repeatable, applied "
                             "in order; --set model.options={} replaces the options, "
                             "--set model.options.width=32 changes one)")


def parse_set_options(pairs) -> dict:
    """["training.epochs=3", ...] -> {"training.epochs": 3} (values parsed as YAML)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. training.learning_rate=3e-4")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {pair!r}: value is not valid YAML ({err})") from None
    return out


def _inherited_model_settings(init_from: str) -> dict:
    """Model section and targets of a run to fine-tune from (empty if it has no config)."""
    from deeplense_tf.files import read_yaml
    from deeplense_tf.runs.layout import RunPaths

    path = RunPaths(init_from).config
    if not path.is_file():
        return {}  # train() reports what is wrong with the folder
    previous = read_yaml(path)
    inherited = {}
    if isinstance(previous.get("model"), dict):
        inherited["model"] = previous["model"]
    targets = (previous.get("data") or {}).get("targets")
    if targets:
        inherited["data.targets"] = targets
    return inherited


def common_overrides(args, extra: dict | None = None) -> dict:
    """Config overrides from the flags `train` and `pretrain` share (--data, --model,
    --epochs, --batch-size, --seed, --smoke, then --set), plus `extra` keys; a None value
    is a flag not given."""
    simple = {
        "data.path": args.data,
        "model.name": args.model,
        "training.epochs": args.epochs,
        "training.batch_size": args.batch_size,
        "seed": args.seed,
        **(extra or {}),
    }
    overrides = {k: v for k, v in simple.items() if v is not None}
    if args.smoke:
        overrides["smoke"] = True
    overrides.update(parse_set_options(args.set))
    return overrides


def build_overrides(args) -> dict:
    overrides: dict = {}
    if args.init_from and not args.config:
        overrides.update(_inherited_model_settings(args.init_from))
    overrides.update(common_overrides(args, {
        "training.init_from": args.init_from,
        "training.freeze_encoder_epochs": args.freeze_encoder_epochs,
    }))
    return overrides


def run(args) -> int:
    from deeplense_tf.training.config import load_config

    config = load_config(args.config, build_overrides(args))
    if not config["data"]["path"]:
        raise ConfigError("no data set: give --data DIR (or data.path in the --config file)")

    from deeplense_tf.training.session import train

    result = train(config, args.out, overwrite=args.overwrite)
    if result.path is not None:
        print(f"run ready: {result.path} (evaluate with: deeplense evaluate --run {result.path})")
    return 0

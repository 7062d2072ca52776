"""The one HyperModel: a search space over the base experiment config, for any registered
architecture, whose trials train through `deeplense train`'s own loop.

A trial is an experiment config: the base config with each hyperparameter's value
written to its key (`trial_config`). `train_trial` hands that config to the package's
`train(config, out_dir)`, so a trial is exactly a `deeplense train` run (time budget,
early stopping, BatchNorm re-estimation, variance calibration included) and its folder a
normal run folder; its score is read from what that run wrote (`trial_metrics`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

import keras_tuner

from deeplense_tf.errors import ConfigError
from deeplense_tf.training.config import ExperimentConfig, apply_smoke, set_dotted, validate_config
from deeplense_tf.training.tuning.space import (
    AUTO_OBJECTIVE,
    SearchSpace,
    _suggest,
    default_search_space,
)

TRAIN_LOG_FILE = "train.log"  # per trial folder: what `train` printed

# Heads whose loss is a negative log-likelihood: their NLLs compare across trials.
LIKELIHOOD_HEADS = ("gaussian", "student_t")


# --- objectives --------------------------------------------------------------------------------


def objective_choices(targets, heads) -> list[str]:
    """Metric names a search can optimise (all minimised)."""
    if list(heads) == ["softmax"]:  # a classifier: cross-entropy or error rate
        return ["val_loss", "val_error"]
    names = ["val_loss", "val_mae"]
    for t in targets:
        names += [f"val_{t}_mae", f"val_{t}_mae_physical"]
        if set(heads) <= set(LIKELIHOOD_HEADS):
            names.append(f"val_{t}_nll")
        if len(targets) > 1:
            names.append(f"val_{t}_loss")
    return names


def default_objective(targets, heads) -> str:
    """Val NLL of the main (first) target when every trial has a likelihood head (Gaussian,
    Student-t), else its val MAE (NLL is not defined for point predictions, and the point
    head's loss does not compare with an NLL). A classifier: its val cross-entropy."""
    if list(heads) == ["softmax"]:
        return "val_loss"
    main = list(targets)[0]
    return f"val_{main}_nll" if set(heads) <= set(LIKELIHOOD_HEADS) else f"val_{main}_mae"


def resolve_objective(name: str | None, targets, heads) -> str:
    """The metric a search minimises; ConfigError listing the choices for an unknown one."""
    if not name or name == AUTO_OBJECTIVE:
        return default_objective(targets, heads)
    choices = objective_choices(targets, heads)
    if name not in choices:
        nll = name.endswith("_nll") and name.removesuffix("_nll") in [f"val_{t}" for t in targets]
        hint = (" (NLL needs the Gaussian or Student-t head in every trial: fix head: gaussian "
                "in the space)"
                if nll else _suggest(name, choices))
        raise ConfigError(f"unknown objective {name!r}{hint}; choose from {', '.join(choices)}")
    return name


def trial_metrics(run_dir) -> dict:
    """The validation metrics of a finished run folder under the tuner's names.

    They describe the model the run saved (best epoch, BatchNorm re-estimate, calibrated
    stds), as `metrics.json` records them: `val_loss`, `val_mae` (mean standardised MAE)
    and per target `val_<t>_mae` (standardised), `val_<t>_mae_physical` (target units),
    `val_<t>_loss` (with several targets) and, for the Gaussian and Student-t heads,
    `val_<t>_nll` (mean negative log-likelihood in nats in target units),
    plus `epochs` (run) and `best_epoch`. A classifier's: `val_loss` (cross-entropy) and
    `val_error` (1 - accuracy).
    """
    from deeplense_tf.files import read_yaml
    from deeplense_tf.runs import layout

    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / layout.METRICS_FILE).read_text())
    stats = json.loads((run_dir / layout.TARGET_STATS_FILE).read_text())
    config = read_yaml(run_dir / layout.CONFIG_FILE)
    head = config["model"]["head"]
    validation = metrics["validation"]
    out = {"val_loss": float(validation["loss"])}
    if head == "softmax":  # the cross-entropy and the error rate of the most probable class
        out["val_error"] = 1.0 - float(validation["accuracy"])
        out["epochs"] = float(metrics["epochs"])
        out["best_epoch"] = float(metrics["best_epoch"] or 0)
        return out
    targets = list(config["data"]["targets"])
    maes = []
    for t in targets:
        entry = validation["targets"][t]
        out[f"val_{t}_mae"] = float(entry["mae_standardised"])
        out[f"val_{t}_mae_physical"] = float(entry["mae"])
        maes.append(out[f"val_{t}_mae"])
        loss = entry.get("loss", validation["loss"] if len(targets) == 1 else None)
        if loss is None:
            continue
        if len(targets) > 1:
            out[f"val_{t}_loss"] = float(loss)
        if head in LIKELIHOOD_HEADS:
            # The NLL losses work in standardised units; + log(std) gives target units.
            out[f"val_{t}_nll"] = float(loss) + math.log(stats[t]["std"])
    out["val_mae"] = float(sum(maes) / len(maes))
    out["epochs"] = float(metrics["epochs"])
    out["best_epoch"] = float(metrics["best_epoch"] or 0)
    return out


# --- the hypermodel ----------------------------------------------------------------------------


class DeepLenseHyperModel(keras_tuner.HyperModel):
    """A KerasTuner HyperModel over the base experiment config of any registered model.

    `declare_hyperparameters(hp)` declares the space in `hp`; `trial_config(values)` is
    the experiment config of one trial; `train_trial(values, out_dir)` trains it with
    `deeplense train`'s loop into the run folder `out_dir` and returns its validation
    metrics (`trial_metrics`) plus `seconds` (wall clock). `build(hp)` gives the trial's
    (untrained) Keras model, built as `deeplense train` builds it. Trials do not go
    through `fit` (Keras's `model.fit` has none of the loop's semantics): a tuner runs
    them with `DeepLenseTuner.run_trial` (`make_tuner`).

    Without a search (an empty `HyperParameters`) each hyperparameter takes its default;
    `hp.Fixed(name, value)` set beforehand overrides it.

    Args:
        base_config: a resolved experiment config with `data.path` set.
        space: a `SearchSpace` of the config's model (default: its built-in one).
        objective: the metric optimised (default: `default_objective`).
    """

    def __init__(self, base_config: dict, space: SearchSpace | None = None,
                 objective: str | None = None, **kwargs):
        family = space.model if space is not None else base_config["model"]["name"]
        super().__init__(name=kwargs.pop("name", f"deeplense_{family}"), **kwargs)
        self.family = family
        self.space = space if space is not None else default_search_space(family)
        config = copy.deepcopy(base_config)
        config["model"]["name"] = family
        # Typed and validated once; `base_config` is its dict form, which trial configs copy.
        self.experiment = ExperimentConfig.from_dict(config)
        heads = self.space.values_of("head") or [self.experiment.model.head]
        if "softmax" in {*heads, self.experiment.model.head} and set(heads) != {"softmax"}:
            raise ConfigError(
                f"{self.space.source or 'the search space'}: a search is over regressors or over "
                f"classifiers, not both: head {'/'.join(heads)} with model.head "
                f"{self.experiment.model.head} (for a classifier fix head: softmax)"
            )
        self.classifier = heads == ["softmax"]
        self._read_data()
        self.base_config = self.experiment.to_dict()
        self.heads = heads  # the heads trials can have: the objective's default and choices depend on it
        self.objective = resolve_objective(objective or self.space.objective, self.targets, self.heads)

    def _read_data(self):
        from deeplense_tf.data import check_target_names, count_usable_examples, read_manifest

        data = self.experiment.data
        path = data.path
        if not path:
            raise ConfigError("data.path is not set (give --data DIR)")
        self.manifest = read_manifest(path)
        self.input_shape = tuple(self.manifest["image_shape"])
        if self.classifier:  # the class label is the target; every example has one
            from deeplense_tf.training.datasets import resolve_targets

            self.targets = resolve_targets(self.experiment.to_dict(), self.manifest)
            splits = self.manifest["splits"]
            self.train_examples = int(splits["train"]["count"])
            self.val_examples = int(splits.get("val", {}).get("count", 0))
        else:
            self.targets = list(check_target_names(data.targets, self.manifest["targets"], path))
            data.targets = list(self.targets)
            self.train_examples = count_usable_examples(path, self.manifest, "train", self.targets)
            self.val_examples = count_usable_examples(path, self.manifest, "val", self.targets)
        if not self.val_examples:
            raise ConfigError(
                f"{path}: no val example has {', '.join(self.targets)} defined (the objective "
                "is a validation metric)"
            )

    # -- configs --------------------------------------------------------------------------

    def declare_hyperparameters(self, hp: keras_tuner.HyperParameters) -> dict:
        """Declare every hyperparameter of the space in `hp`; `{name: value}`."""
        return {name: h.declare(hp) for name, h in self.space.hyperparameters.items()}

    declare = declare_hyperparameters

    def trial_config(self, values: Mapping, init_from=None) -> dict:
        """The experiment config of one trial: the base config with each value written to
        its key. Hyperband's `tuner/epochs` sets `training.epochs`; other `tuner/` entries
        are KerasTuner's bookkeeping. Smoke configs stay shrunk.

        `init_from` (a finished trial's run folder, Hyperband continuing it): the trial
        starts from those weights with a fresh schedule at the trial's own learning rate
        for the `tuner/epochs - tuner/initial_epoch` epochs left.
        """
        config = copy.deepcopy(self.base_config)
        for name, value in values.items():
            if name == "tuner/epochs":
                set_dotted(config, "training.epochs", int(value))
            elif name in self.space.hyperparameters:
                set_dotted(config, self.space.hyperparameters[name].key, value)
        if init_from is not None:
            t = config["training"]
            initial = int(values.get("tuner/initial_epoch", 0) or 0)
            t["epochs"] = max(t["epochs"] - initial, 1)
            t["init_from"] = str(Path(init_from).resolve())
            t["finetune_lr_factor"] = 1.0
        config = validate_config(config, source=f"trial of {self.space.source}")
        if config["smoke"]:
            config = apply_smoke(config)
        return config

    # -- KerasTuner hooks -------------------------------------------------------------------

    def build(self, hp):
        """The trial's Keras model, untrained, as `deeplense train` builds it."""
        from deeplense_tf.training.model_setup import build_model_from_config

        config = self.trial_config({**self.declare_hyperparameters(hp), **_tuner_values(hp)})
        return build_model_from_config(config, self.input_shape, self.targets)

    def fit(self, hp, model, *args, **kwargs):
        raise ConfigError(
            "DeepLenseHyperModel trials train through deeplense train's loop: run them with "
            "deeplense_tf.training.tuning.make_tuner(...) (DeepLenseTuner.run_trial), not a "
            "plain KerasTuner tuner"
        )

    def train_trial(self, values: Mapping, out_dir, init_from=None) -> dict:
        """Train one trial into the run folder `out_dir`; its metrics plus `seconds`.

        What `train` prints goes to `out_dir/train.log`. A folder that already holds the
        finished run of this trial (the search stopped before the tuner recorded it) is
        read, not trained again; an interrupted one resumes from its backup.
        """
        from deeplense_tf.training.session import train

        config = self.trial_config(values, init_from=init_from)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        finished, other = _run_state(out, config)
        if not finished:
            with open(out / TRAIN_LOG_FILE, "a") as log, contextlib.redirect_stdout(log):
                # A run of another config here is what a trial the oracle never recorded
                # left behind (its id is handed out again): replace it.
                train(config, out, progress=False, overwrite=other)
        metrics = trial_metrics(out)
        metrics["seconds"] = float(time.perf_counter() - start)
        return metrics


def _run_state(out: Path, config: dict) -> tuple[bool, bool]:
    """(`out` holds the finished run of `config`, `out` holds a run of another config)."""
    from deeplense_tf.files import read_yaml
    from deeplense_tf.runs import layout
    from deeplense_tf.training.config import diff_configs

    if not (out / layout.CONFIG_FILE).is_file():
        return False, False
    if diff_configs(read_yaml(out / layout.CONFIG_FILE), config):
        return False, True
    try:
        info = json.loads((out / layout.RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False, False
    return bool(info.get("complete")), False


def _tuner_values(hp) -> dict:
    return {k: v for k, v in hp.values.items() if k.startswith("tuner/")}


def build_hypermodel(base_config: dict, space: SearchSpace | None = None,
                     objective: str | None = None) -> DeepLenseHyperModel:
    """The HyperModel of `base_config`'s model (or of `space.model`)."""
    return DeepLenseHyperModel(base_config, space, objective)


def best_trial_config(hypermodel: DeepLenseHyperModel, trial) -> dict:
    """The experiment config of `trial` (a KerasTuner Trial) for `deeplense train --config`:
    its hyperparameters from scratch (a Hyperband continuation trains all `tuner/epochs`)."""
    return hypermodel.trial_config(dict(trial.hyperparameters.values))

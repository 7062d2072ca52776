"""Hyperparameter search with KerasTuner: one HyperModel per model family, search spaces
read from YAML files, the three tuners, the results table and the best trial written as
an experiment config.

    from deeplense_tf.training.tuning import tune
    result = tune("data/model2", "tune/cnn", model="cnn", tuner="bayesian", max_trials=20)
    result.table            # pandas DataFrame, one row per trial (also OUT/results.csv)
    result.best_config      # an experiment config (also OUT/best_config.yaml)

A trial is an experiment config: the base config (the defaults, `--config`, the space
file's `config:` section) with each hyperparameter's value written to the config key it
stands for (`learning_rate` -> `training.learning_rate`, `width` -> `model.options.width`
...). Building, compiling and the data pipeline are the training package's own
(`build_model_from_config`, `compile_model`, `make_datasets`), so the best trial's config
trains with `deeplense train --config OUT/best_config.yaml` exactly as it was tuned
(Hyperband: see `tune`).

Search-space file (`tuning/<family>.yaml`; a file lists exactly what is searched,
everything else comes from the base config):

    model: resnet                 # the family (or --model)
    objective: auto               # or any validation metric, e.g. val_log10_m_axion_ev_mae
    config:                       # experiment-config keys fixed for every trial
      model: {crop: 48}
    hyperparameters:
      depth: {values: [18, 34]}                                # Choice
      learning_rate: {min: 1.0e-4, max: 3.0e-3, sampling: log} # Float (Int when all ints)
      epochs: {min: 10, max: 30, step: 10}                     # Int
      head: gaussian                                           # Fixed

Output folder: `search/` (KerasTuner's project: oracle, trials, checkpoints),
`tune.json` (what was searched; a resumed search must match it), `results.csv`,
`scores.png`, `best_config.yaml`, `logs/` (TensorBoard, one folder per trial).
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import keras
import keras_tuner
import numpy as np

from deeplense_tf.errors import ConfigError
from deeplense_tf.training.config import (
    apply_smoke,
    config_to_yaml,
    load_config,
    read_yaml,
    validate_config,
    write_text_atomic,
)

TUNERS = ("random", "hyperband", "bayesian")
PROJECT_NAME = "search"
SETTINGS_FILE = "tune.json"
RESULTS_FILE = "results.csv"
PLOT_FILE = "scores.png"
BEST_CONFIG_FILE = "best_config.yaml"
TRIAL_RECORD_FILE = "deeplense_trial.json"  # per trial folder: which tuner ran it, where
AUTO_OBJECTIVE = "auto"

# Hyperparameters every family has, and the config key each one sets.
COMMON_KEYS = {
    "learning_rate": "training.learning_rate",
    "weight_decay": "training.weight_decay",
    "dropout": "model.options.dropout",
    "head": "model.head",
    "augment": "data.augment",
    "batch_size": "training.batch_size",
    "epochs": "training.epochs",
    "warmup_epochs": "training.warmup_epochs",
    "point_loss": "training.point_loss",
    "normalization": "model.normalization",
    "crop": "model.crop",
    "clip_norm": "training.clip_norm",
}

# What every family's default space searches besides depth and width.
COMMON_SPACE = {
    "dropout": {"min": 0.0, "max": 0.4, "step": 0.1},
    "learning_rate": {"min": 1.0e-4, "max": 3.0e-3, "sampling": "log", "default": 1.0e-3},
    "weight_decay": {"min": 1.0e-6, "max": 1.0e-3, "sampling": "log", "default": 1.0e-4},
    "head": {"values": ["gaussian", "point"]},
    "augment": {"values": ["d4", "exact", "none"]},
    "batch_size": {"values": [64, 32, 128]},
    "epochs": {"min": 10, "max": 30, "step": 10, "default": 30},
}

_SPEC_KEYS = {"values", "min", "max", "step", "sampling", "default", "type"}
_SAMPLINGS = ("linear", "log", "reverse_log")
_SPACE_KEYS = {"model", "objective", "config", "hyperparameters"}


# --- search spaces -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hyperparameter:
    """One searched (or fixed) hyperparameter.

    Attributes:
        name: the name in the space file, the results table and KerasTuner.
        key: the dotted experiment-config key its value is written to.
        kind: "choice", "int", "float" or "fixed".
        values: the choices ("choice") or the one value ("fixed").
        min, max, step, sampling: the range ("int", "float"); sampling linear | log |
            reverse_log.
        default: the value a build without a search uses (first choice / min unless set).
    """

    name: str
    key: str
    kind: str
    values: tuple = ()
    min: float | None = None
    max: float | None = None
    step: float | None = None
    sampling: str = "linear"
    default: object = None

    def declare(self, hp: keras_tuner.HyperParameters):
        """Register this hyperparameter in `hp` and return its current value."""
        if self.kind == "fixed":
            return hp.Fixed(self.name, self.values[0])
        if self.kind == "choice":
            return hp.Choice(self.name, list(self.values), default=self.default)
        if self.kind == "int":
            return hp.Int(self.name, int(self.min), int(self.max), step=int(self.step or 1),
                          sampling=self.sampling, default=self.default)
        return hp.Float(self.name, float(self.min), float(self.max), step=self.step,
                        sampling=self.sampling, default=self.default)

    def candidates(self) -> list:
        """The values checked against the config when the space is loaded (ends of a range)."""
        if self.kind in ("fixed", "choice"):
            return list(self.values)
        return [self.min, self.max]

    def maximum(self):
        return max(self.values) if self.kind in ("fixed", "choice") else self.max

    def to_dict(self):
        """The space-file form of this hyperparameter."""
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            out = {"values": list(self.values)}
            if self.default is not None and self.default != self.values[0]:
                out["default"] = self.default
            return out
        out = {"min": self.min, "max": self.max}
        if self.step is not None:
            out["step"] = self.step
        if self.sampling != "linear":
            out["sampling"] = self.sampling
        if self.default is not None and self.default != self.min:
            out["default"] = self.default
        return out


@dataclass
class SearchSpace:
    """A model family, the hyperparameters searched, fixed config settings and the objective.

    Attributes:
        model: the family (a name in `deeplense_tf.models.MODEL_NAMES`).
        hyperparameters: name -> `Hyperparameter`, in file order.
        config: experiment-config settings applied to every trial (nested dict).
        objective: a validation metric name, or "auto" (see `default_objective`).
        source: the file it came from (for messages).
    """

    model: str
    hyperparameters: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    objective: str = AUTO_OBJECTIVE
    source: str = "search space"

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "objective": self.objective,
            "config": copy.deepcopy(self.config),
            "hyperparameters": {n: h.to_dict() for n, h in self.hyperparameters.items()},
        }

    def values_of(self, name):
        """Every value hyperparameter `name` can take (None for a continuous range)."""
        h = self.hyperparameters.get(name)
        if h is None:
            return None
        return list(h.values) if h.kind in ("fixed", "choice") else None


def hyperparameter_keys(family: str) -> dict:
    """`{hyperparameter name: config key}` for a model family: the common names, the
    family's aliases (`depth`, `width` ...) and every builder option by its own name."""
    from deeplense_tf.models import MODEL_NAMES, model_options

    if family not in MODEL_NAMES:
        raise ConfigError(f"unknown model {family!r}; choose from {', '.join(MODEL_NAMES)}")
    keys = dict(COMMON_KEYS)
    for option in model_options(family):
        keys[option] = f"model.options.{option}"
    cls = HYPERMODELS.get(family, DeepLenseHyperModel)
    for alias, option in cls.ALIASES.items():
        keys[alias] = f"model.options.{option}"
    return keys


def _is_scalar(value) -> bool:
    return isinstance(value, bool | int | float | str)


def _number(value):
    """YAML 1.1 reads `1e-3` (no dot) as a string: accept it as the number it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_hyperparameter(name: str, spec, key: str, source: str) -> Hyperparameter:
    """A space-file entry -> `Hyperparameter`; ConfigError naming `name` when malformed.

    Forms: a scalar (fixed), `{values: [...]}` (choice), `{min, max[, step][, sampling]}`
    (int when min, max and step are integers, else float; `type: float` forces float),
    each with an optional `default`.
    """
    where = f"{source}: hyperparameter {name}"
    if spec is None or isinstance(spec, list):
        raise ConfigError(
            f"{where}: give a value, {{values: [...]}} or {{min: .., max: ..}}, got {spec!r}"
        )
    if _is_scalar(spec):
        return Hyperparameter(name, key, "fixed", values=(spec,), default=spec)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; fields: {', '.join(sorted(_SPEC_KEYS))}")
    kind = spec.get("type")
    if kind is not None and kind not in ("int", "float", "choice", "fixed"):
        raise ConfigError(f"{where}: type must be int, float, choice or fixed, got {kind!r}")
    default = spec.get("default")
    if "values" in spec:
        if {"min", "max", "step", "sampling"} & set(spec):
            raise ConfigError(f"{where}: give either values or min/max, not both")
        values = spec["values"]
        if not isinstance(values, list):
            raise ConfigError(f"{where}: values must be a list, got {values!r}")
        if not values:
            raise ConfigError(f"{where}: empty range (values is an empty list)")
        numbers = [_number(v) for v in values]
        if all(isinstance(v, int | float) for v in numbers):
            values = numbers  # `1e-3` read as a string by YAML 1.1
        if not all(_is_scalar(v) for v in values):
            raise ConfigError(
                f"{where}: values must be numbers, strings or booleans (null or lists: set "
                f"them in the config section instead), got {values!r}"
            )
        if len({type(v) for v in values}) > 1:
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                values = [float(v) for v in values]
            else:
                raise ConfigError(f"{where}: values must all be of one type, got {values!r}")
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: values repeat, got {values!r}")
        if default is not None and default not in values:
            raise ConfigError(f"{where}: default {default!r} is not one of the values {values!r}")
        kind = "fixed" if kind == "fixed" or len(values) == 1 else "choice"
        return Hyperparameter(name, key, kind, values=tuple(values),
                              default=values[0] if default is None else default)
    if "min" not in spec or "max" not in spec:
        raise ConfigError(f"{where}: a range needs both min and max (or give values: [...])")
    low, high, step = _number(spec["min"]), _number(spec["max"]), _number(spec.get("step"))
    default = _number(default)
    for label, v in (("min", low), ("max", high), ("step", step), ("default", default)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)):
            raise ConfigError(f"{where}: {label} must be a finite number, got {v!r}")
    if low > high:
        raise ConfigError(f"{where}: empty range (min {low} > max {high})")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: step must be > 0, got {step}")
    sampling = spec.get("sampling", "linear")
    if sampling not in _SAMPLINGS:
        raise ConfigError(f"{where}: sampling must be one of {', '.join(_SAMPLINGS)}, got {sampling!r}")
    if sampling != "linear" and low <= 0:
        raise ConfigError(f"{where}: {sampling} sampling needs min > 0, got {low}")
    if sampling != "linear" and step is not None:
        raise ConfigError(f"{where}: step cannot be combined with {sampling} sampling")
    if default is not None and not low <= default <= high:
        raise ConfigError(f"{where}: default {default} is outside [{low}, {high}]")
    integral = all(isinstance(v, int) for v in (low, high) + ((step,) if step is not None else ()))
    if kind is None:
        kind = "int" if integral else "float"
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}: type {kind} needs values: [...], not min/max")
    if kind == "int" and not integral:
        raise ConfigError(f"{where}: type int needs integer min, max and step")
    if low == high:
        return Hyperparameter(name, key, "fixed", values=(low,), default=low)
    if kind == "float":
        low, high = float(low), float(high)
        step = None if step is None else float(step)
        default = None if default is None else float(default)
    return Hyperparameter(name, key, kind, min=low, max=high, step=step, sampling=sampling,
                          default=default)


def _suggest(name, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def parse_search_space(raw: Mapping, model: str | None = None, source: str = "search space",
                       base_config: dict | None = None) -> SearchSpace:
    """A search space from its file contents.

    Args:
        raw: the parsed YAML mapping (see the module docstring).
        model: the family; overrides nothing: ConfigError when it differs from `raw["model"]`.
        source: the file name, for messages.
        base_config: when given, every value a hyperparameter can take (each choice, the
            ends of each range) is checked against the experiment config's rules.

    Raises:
        ConfigError naming the file and key: unknown field or hyperparameter, empty range,
        bad value, two hyperparameters setting one config key.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: must be a mapping with model and hyperparameters")
    unknown = sorted(set(raw) - _SPACE_KEYS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown field {unknown[0]!r}{_suggest(unknown[0], _SPACE_KEYS)}; "
            f"fields: {', '.join(sorted(_SPACE_KEYS))}"
        )
    family = raw.get("model")
    if model and family and model != family:
        raise ConfigError(f"{source}: is a space for model {family!r}, but --model is {model!r}")
    family = model or family
    if not family:
        raise ConfigError(f"{source}: no model family (set model: NAME in the file, or --model)")
    keys = hyperparameter_keys(family)
    params = raw.get("hyperparameters") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{source}: hyperparameters must be a mapping of name -> range")
    space = SearchSpace(model=family, source=source)
    objective = raw.get("objective") or AUTO_OBJECTIVE
    if not isinstance(objective, str):
        raise ConfigError(f"{source}: objective must be a metric name or auto, got {objective!r}")
    space.objective = objective
    config = raw.get("config") or {}
    if not isinstance(config, Mapping):
        raise ConfigError(f"{source}: config must be a mapping of experiment-config keys")
    space.config = copy.deepcopy(dict(config))
    used_keys: dict[str, str] = {}
    for name, spec in params.items():
        name = str(name)
        if name not in keys:
            raise ConfigError(
                f"{source}: unknown hyperparameter {name!r} for model {family}"
                f"{_suggest(name, keys)}; known: {', '.join(sorted(keys))}"
            )
        key = keys[name]
        if key in used_keys:
            raise ConfigError(
                f"{source}: hyperparameters {used_keys[key]} and {name} both set {key}"
            )
        used_keys[key] = name
        space.hyperparameters[name] = parse_hyperparameter(name, spec, key, source)
    if base_config is not None:
        check_space_values(space, base_config)
    return space


def check_space_values(space: SearchSpace, base_config: dict) -> None:
    """ConfigError naming the hyperparameter when one of its values breaks a config rule."""
    for h in space.hyperparameters.values():
        for value in h.candidates():
            config = copy.deepcopy(base_config)
            _set_dotted(config, h.key, value)
            try:
                validate_config(config, source=space.source)
            except ConfigError as err:
                raise ConfigError(
                    f"{space.source}: hyperparameter {h.name} value {value!r} is not valid for "
                    f"{h.key} ({str(err).removeprefix(space.source + ': ')})"
                ) from None


def default_search_space(family: str) -> SearchSpace:
    """The built-in space of a family (the same as `tuning/<family>.yaml`)."""
    cls = hypermodel_class(family)
    return parse_search_space(
        {"model": family, "hyperparameters": cls.default_space()},
        source=f"default search space of {family}",
    )


def load_search_space(path, model: str | None = None, base_config: dict | None = None) -> SearchSpace:
    """Read a search-space YAML file (see `parse_search_space`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--space {path}: no such file")
    return parse_search_space(read_yaml(path), model, source=str(path), base_config=base_config)


def _set_dotted(config: dict, dotted: str, value) -> None:
    node = config
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


# --- metrics -----------------------------------------------------------------------------------


class TuningMetrics(keras.callbacks.Callback):
    """Adds per-target names to the epoch logs, whatever Keras called them.

    With one output Keras logs `val_mae` / `val_loss`; with several `val_<t>_mae` /
    `val_<t>_loss`. Afterwards the logs hold, per target: `val_<t>_mae` (standardised),
    `val_<t>_mae_physical` (target units), for the Gaussian head `val_<t>_nll` (mean
    negative log-likelihood in nats, in physical units, as `deeplense evaluate` reports it),
    and `val_mae` (mean of the standardised MAEs). Must run before callbacks that read
    the objective (KerasTuner's checkpoint, early stopping).
    """

    def __init__(self, targets, head: str, target_stats: Mapping):
        super().__init__()
        self.targets = list(targets)
        self.head = head
        self.target_stats = {t: dict(s) for t, s in target_stats.items()}

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        add_tuning_metrics(logs, self.targets, self.head, self.target_stats)


def add_tuning_metrics(logs: dict, targets, head: str, target_stats: Mapping) -> dict:
    """`TuningMetrics`'s additions, in place on `logs`; returns `logs`."""
    single = len(targets) == 1
    maes = []
    for t in targets:
        mae = logs.get(f"val_{t}_mae", logs.get("val_mae") if single else None)
        loss = logs.get(f"val_{t}_loss", logs.get("val_loss") if single else None)
        if mae is not None:
            logs[f"val_{t}_mae"] = float(mae)
            logs[f"val_{t}_mae_physical"] = float(mae) * target_stats[t]["std"]
            maes.append(float(mae))
        if head == "gaussian" and loss is not None:
            # GaussianNLL works in standardised units; + log(std) gives target units.
            logs[f"val_{t}_nll"] = float(loss) + math.log(target_stats[t]["std"])
    if maes:
        logs["val_mae"] = float(np.mean(maes))
    return logs


def objective_choices(targets, heads) -> list[str]:
    """Metric names a search can optimise (all minimised)."""
    names = ["val_loss", "val_mae"]
    for t in targets:
        names += [f"val_{t}_mae", f"val_{t}_mae_physical"]
        if set(heads) == {"gaussian"}:
            names.append(f"val_{t}_nll")
        if len(targets) > 1:
            names.append(f"val_{t}_loss")
    return names


def default_objective(targets, heads) -> str:
    """Val NLL of the main (first) target when every trial has the Gaussian head, else its
    val MAE (NLL is not defined for point predictions, and losses of the two heads are not
    comparable)."""
    main = list(targets)[0]
    return f"val_{main}_nll" if set(heads) == {"gaussian"} else f"val_{main}_mae"


# --- hypermodels -------------------------------------------------------------------------------


class _BudgetStop(keras.callbacks.Callback):
    """Stops after the epoch at which the next one would overrun `seconds`."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        self.last = self.start

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        epoch_seconds, self.last = now - self.last, now
        if now - self.start + epoch_seconds > self.seconds:
            self.model.stop_training = True


class DeepLenseHyperModel(keras_tuner.HyperModel):
    """A KerasTuner HyperModel for one model family of the registry.

    `build(hp)` declares every hyperparameter of the search space in `hp`, writes their
    values into a copy of the base config (`trial_config`), and builds and compiles the
    model exactly as `deeplense train` would. `fit(hp, model)` builds the trial's data
    pipeline (batch size and augmentation are hyperparameters too) and trains for the
    trial's epochs with the config's schedule, early stopping and time budget; it returns
    the validation metrics of the best epoch (see `TuningMetrics`) plus `seconds` (build
    and training, wall clock) and `epochs` (run).

    Subclasses name the family and its `depth` / `width` aliases; the space searched is
    `space` (default: the family's `default_space()`). Without a search (an empty
    `HyperParameters`) each hyperparameter takes its default; `hp.Fixed(name, value)`
    set beforehand overrides it.

    Args:
        base_config: a resolved experiment config with `data.path` set; its model name
            must be this family (it is set when None).
        space: a `SearchSpace` of this family (default: the built-in one).
        objective: the metric optimised (default: `default_objective`); early stopping
            watches it.
    """

    family: str | None = None
    ALIASES: dict = {}  # hyperparameter name -> builder option it sets
    FAMILY_SPACE: dict = {}  # depth / width part of the default space

    def __init__(self, base_config: dict, space: SearchSpace | None = None,
                 objective: str | None = None, **kwargs):
        family = self.family or base_config["model"]["name"]
        super().__init__(name=kwargs.pop("name", f"deeplense_{family}"), **kwargs)
        self.family = family
        self.space = space if space is not None else default_search_space(family)
        if self.space.model != family:
            raise ConfigError(f"{self.space.source}: is a space for {self.space.model}, not {family}")
        config = copy.deepcopy(base_config)
        config["model"]["name"] = family
        self.base_config = validate_config(config)
        self._read_data()
        # The heads trials can have: the objective's default and choices depend on it.
        self.heads = self.space.values_of("head") or [self.base_config["model"]["head"]]
        self.objective = resolve_objective(objective or self.space.objective, self.targets, self.heads)
        self._trial_start = None

    @classmethod
    def default_space(cls) -> dict:
        """The family's default space in space-file form (`tuning/<family>.yaml`)."""
        return {**copy.deepcopy(cls.FAMILY_SPACE), **copy.deepcopy(COMMON_SPACE)}

    def _read_data(self):
        from deeplense_tf.data import check_target_names, read_manifest, resolve_target_stats
        from deeplense_tf.training.trainer import count_usable_examples

        path = self.base_config["data"]["path"]
        if not path:
            raise ConfigError("data.path is not set (give --data DIR)")
        self.manifest = read_manifest(path)
        self.targets = list(check_target_names(self.base_config["data"]["targets"],
                                               self.manifest["targets"], path))
        self.base_config["data"]["targets"] = list(self.targets)
        self.input_shape = tuple(self.manifest["image_shape"])
        stats = resolve_target_stats(path, self.targets)
        self.target_stats = {t: {"mean": float(s["mean"]), "std": float(s["std"])}
                             for t, s in stats.items()}
        self.train_examples = count_usable_examples(path, self.manifest, "train", self.targets)
        self.val_examples = count_usable_examples(path, self.manifest, "val", self.targets)
        if not self.val_examples:
            raise ConfigError(
                f"{path}: no val example has {', '.join(self.targets)} defined (the objective "
                "is a validation metric)"
            )

    # -- configs --------------------------------------------------------------------------

    def declare(self, hp: keras_tuner.HyperParameters) -> dict:
        """Declare every hyperparameter of the space in `hp`; `{name: value}`."""
        return {name: h.declare(hp) for name, h in self.space.hyperparameters.items()}

    def trial_config(self, values: Mapping) -> dict:
        """The experiment config of one trial: the base config with each value written to
        its key. Hyperband's `tuner/epochs` sets `training.epochs`; other `tuner/` entries
        are KerasTuner's bookkeeping. Smoke configs stay shrunk."""
        config = copy.deepcopy(self.base_config)
        for name, value in values.items():
            if name == "tuner/epochs":
                _set_dotted(config, "training.epochs", int(value))
            elif name in self.space.hyperparameters:
                _set_dotted(config, self.space.hyperparameters[name].key, value)
        config = validate_config(config, source=f"trial of {self.space.source}")
        if config["smoke"]:
            config = apply_smoke(config)
        return config

    def steps_per_epoch(self, config: dict) -> int:
        batch = config["training"]["batch_size"]
        if self.train_examples < batch:
            raise ConfigError(
                f"{config['data']['path']}: the train split has {self.train_examples} usable "
                f"examples, fewer than batch_size {batch}"
            )
        return config["training"]["steps_per_epoch"] or self.train_examples // batch

    # -- KerasTuner hooks -------------------------------------------------------------------

    def build(self, hp):
        from deeplense_tf.training.trainer import build_model_from_config, compile_model

        self._trial_start = time.perf_counter()
        config = self.trial_config({**self.declare(hp), **_tuner_values(hp)})
        keras.utils.set_random_seed(config["seed"])  # every trial starts from the same seed
        model = build_model_from_config(config, self.input_shape, self.targets)
        # The cosine schedule spans the epochs this fit runs: Hyperband continues a trial
        # from an earlier one's weights at `tuner/initial_epoch` (with a fresh optimizer).
        initial = int(hp.values.get("tuner/initial_epoch", 0) or 0)
        schedule_config = copy.deepcopy(config)
        schedule_config["training"]["epochs"] = max(config["training"]["epochs"] - initial, 1)
        compile_model(model, schedule_config, self.steps_per_epoch(config))
        return model

    def fit(self, hp, model, *args, epochs=None, initial_epoch=0, callbacks=None, verbose=0,
            **kwargs):
        """Train `model` (from `build(hp)`) on the trial's data; the best epoch's metrics."""
        import tensorflow as tf

        from deeplense_tf.training.trainer import make_datasets

        values = {**self.declare(hp), **_tuner_values(hp)}
        if epochs is not None:  # Hyperband decides the epochs
            values["tuner/epochs"] = int(epochs)
        config = self.trial_config(values)
        t = config["training"]
        train_ds, val_ds, _, _ = make_datasets(config)
        # The usable count is known; telling tf.data spares Keras's "ran out of data"
        # warning at the end of every validation pass (filtered data has no cardinality).
        val_steps = math.ceil(self.val_examples / t["batch_size"])
        if t["validation_steps"]:
            val_steps = min(val_steps, t["validation_steps"])
            val_ds = val_ds.take(val_steps)
        val_ds = val_ds.apply(tf.data.experimental.assert_cardinality(val_steps))
        head = config["model"]["head"]
        metrics_callback = TuningMetrics(self.targets, head, self.target_stats)
        extra = []
        if t["early_stopping_patience"]:
            extra.append(keras.callbacks.EarlyStopping(
                monitor=self.objective, patience=t["early_stopping_patience"], mode="min"))
        if t["time_budget_minutes"]:
            extra.append(_BudgetStop(t["time_budget_minutes"] * 60))
        start = self._trial_start or time.perf_counter()
        history = model.fit(
            train_ds.repeat(),
            steps_per_epoch=self.steps_per_epoch(config),
            epochs=t["epochs"],
            initial_epoch=int(initial_epoch or 0),
            validation_data=val_ds,
            callbacks=[metrics_callback, *(callbacks or []), *extra],
            verbose=verbose,
            shuffle=False,  # the pipeline shuffles (seeded)
        )
        seconds = time.perf_counter() - start
        self._trial_start = None
        return best_epoch_metrics(history.history, self.objective, seconds)


def _tuner_values(hp) -> dict:
    return {k: v for k, v in hp.values.items() if k.startswith("tuner/")}


def best_epoch_metrics(history: Mapping, objective: str, seconds: float) -> dict:
    """The validation metrics of the epoch with the lowest `objective`, plus `seconds` and
    `epochs` (run). A NaN objective everywhere gives NaN (KerasTuner marks the trial failed)."""
    values = np.asarray(history.get(objective, []), dtype=np.float64)
    if values.size == 0:
        raise ConfigError(
            f"objective {objective} was not logged; logged: {', '.join(sorted(history))}"
        )
    best = int(np.nanargmin(values)) if np.isfinite(values).any() else len(values) - 1
    out = {k: float(v[best]) for k, v in history.items() if k.startswith("val_") and len(v) > best}
    out.update(seconds=float(seconds), epochs=float(len(values)), best_epoch=float(best + 1))
    return out


def resolve_objective(name: str | None, targets, heads) -> str:
    """The metric a search minimises; ConfigError listing the choices for an unknown one."""
    if not name or name == AUTO_OBJECTIVE:
        return default_objective(targets, heads)
    choices = objective_choices(targets, heads)
    if name not in choices:
        nll = name.endswith("_nll") and name.removesuffix("_nll") in [f"val_{t}" for t in targets]
        hint = (" (NLL needs the Gaussian head in every trial: fix head: gaussian in the space)"
                if nll else _suggest(name, choices))
        raise ConfigError(f"unknown objective {name!r}{hint}; choose from {', '.join(choices)}")
    return name


class CNNHyperModel(DeepLenseHyperModel):
    """`cnn`: depth = blocks (each halves the image and doubles the filters), width = filters
    of the first block."""

    family = "cnn"
    ALIASES = {"depth": "blocks"}
    FAMILY_SPACE = {"depth": {"values": [3, 2, 4]}, "width": {"values": [32, 16, 64]}}


class ResNetHyperModel(DeepLenseHyperModel):
    """`resnet`: depth 18 or 34, width = filters of the first stage, plain or xresnet stem."""

    family = "resnet"
    FAMILY_SPACE = {
        "depth": {"values": [18, 34]},
        "width": {"values": [32, 16, 64]},
        "variant": {"values": ["resnet", "xresnet"]},
    }


class EfficientNetHyperModel(DeepLenseHyperModel):
    """`efficientnet`: the EfficientNetV2 variant scales depth and width together."""

    family = "efficientnet"
    FAMILY_SPACE = {"variant": {"values": ["b0", "b1", "b2"]}}


class ViTHyperModel(DeepLenseHyperModel):
    """`vit`: depth = transformer blocks, width = token width (`dim`), attention heads."""

    family = "vit"
    ALIASES = {"width": "dim"}
    FAMILY_SPACE = {
        "depth": {"min": 2, "max": 8, "step": 2, "default": 6},
        "width": {"values": [128, 64, 192]},
        "heads": {"values": [4, 2]},
    }


class CNNLSTMHyperModel(DeepLenseHyperModel):
    """`cnn_lstm`: depth = stacked LSTM layers, width = filters of the frame CNN, LSTM units."""

    family = "cnn_lstm"
    ALIASES = {"depth": "lstm_layers"}
    FAMILY_SPACE = {
        "depth": {"values": [1, 2]},
        "width": {"values": [32, 16]},
        "lstm_units": {"values": [128, 64]},
    }


HYPERMODELS: dict[str, type[DeepLenseHyperModel]] = {
    cls.family: cls
    for cls in (CNNHyperModel, ResNetHyperModel, EfficientNetHyperModel, ViTHyperModel,
                CNNLSTMHyperModel)
}


def hypermodel_class(family: str) -> type[DeepLenseHyperModel]:
    from deeplense_tf.models import MODEL_NAMES

    if family not in MODEL_NAMES:
        raise ConfigError(f"unknown model {family!r}; choose from {', '.join(MODEL_NAMES)}")
    if family not in HYPERMODELS:
        raise ConfigError(
            f"no HyperModel for model {family!r} yet; tunable: {', '.join(HYPERMODELS)}"
        )
    return HYPERMODELS[family]


def build_hypermodel(base_config: dict, space: SearchSpace | None = None,
                     objective: str | None = None) -> DeepLenseHyperModel:
    """The HyperModel of `base_config`'s model family (or of `space.model`)."""
    family = space.model if space is not None else base_config["model"]["name"]
    return hypermodel_class(family)(base_config, space, objective)


# --- tuners ------------------------------------------------------------------------------------


class _DeepLenseTuner:
    """Mixed into KerasTuner's tuners: records which tuner ran each trial (TRIAL_RECORD_FILE in
    the trial folder) and prints one line per finished trial."""

    progress_bar = None

    def run_trial(self, trial, *args, **kwargs):
        record = {"tuner_id": self.tuner_id, "host": socket.gethostname(), "pid": os.getpid()}
        path = Path(self.get_trial_dir(trial.trial_id)) / TRIAL_RECORD_FILE
        write_text_atomic(path, json.dumps(record) + "\n")
        return super().run_trial(trial, *args, **kwargs)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        metrics = trial.metrics
        objective = self.oracle.objective.name
        score = metrics.get_best_value(objective) if metrics.exists(objective) else None
        seconds = metrics.get_best_value("seconds") if metrics.exists("seconds") else None
        line = f"trial {trial.trial_id} ({self.tuner_id}): {trial.status}"
        if score is not None:
            line += f", {objective} {score:.5g}"
        if seconds is not None:
            line += f", {seconds:.1f} s"
        if trial.status != "COMPLETED" and trial.message:
            line += "\n  " + trial.message.strip().splitlines()[-1]
        writer = self.progress_bar.write if self.progress_bar is not None else print
        writer(line)
        if self.progress_bar is not None:
            self.progress_bar.update(1)


class RandomSearchTuner(_DeepLenseTuner, keras_tuner.RandomSearch):
    pass


class HyperbandTuner(_DeepLenseTuner, keras_tuner.Hyperband):
    pass


class BayesianTuner(_DeepLenseTuner, keras_tuner.BayesianOptimization):
    pass


def make_tuner(kind: str, hypermodel: DeepLenseHyperModel, directory, *, max_trials: int | None,
               max_epochs: int | None = None, seed: int = 0, overwrite: bool = False):
    """A KerasTuner tuner minimising `hypermodel.objective`, its project in `directory/search`.

    Args:
        kind: random | hyperband | bayesian.
        max_trials: trials in all (a resumed search counts the finished ones); for
            Hyperband a cap on the trials its brackets would run (None = no cap).
        max_epochs: Hyperband's largest epoch budget per trial.
        overwrite: False reloads a project found in `directory` (resume).
    """
    if kind not in TUNERS:
        raise ConfigError(f"unknown tuner {kind!r}; choose from {', '.join(TUNERS)}")
    common = dict(
        hypermodel=hypermodel,
        objective=keras_tuner.Objective(hypermodel.objective, direction="min"),
        seed=seed,
        directory=str(directory),
        project_name=PROJECT_NAME,
        overwrite=overwrite,
    )
    if kind == "random":
        return RandomSearchTuner(max_trials=max_trials, **common)
    if kind == "bayesian":
        return BayesianTuner(max_trials=max_trials, **common)
    tuner = HyperbandTuner(max_epochs=int(max_epochs or 1), factor=3, **common)
    if max_trials:
        tuner.oracle.max_trials = max_trials
    return tuner


# --- results -----------------------------------------------------------------------------------


def read_trials(project_dir) -> list:
    """KerasTuner `Trial`s of a project folder, in trial order."""
    from keras_tuner.engine.trial import Trial

    trials = [Trial.load(str(p)) for p in Path(project_dir).glob("trial_*/trial.json")]
    return sorted(trials, key=lambda t: int(t.trial_id))


def results_table(project_dir, objective: str):
    """One row per trial: `trial_id`, `status`, `score` (the objective at the best epoch),
    `seconds`, `epochs`, each hyperparameter, the other validation metrics, and `tuner_id`
    (which tuner ran it, from the trial folder's record)."""
    import pandas as pd

    rows = []
    for trial in read_trials(project_dir):
        metrics = trial.metrics
        best = {name: metrics.get_best_value(name) for name in metrics.metrics}
        row = {
            "trial_id": trial.trial_id,
            "status": trial.status,
            "score": best.get(objective, np.nan),
            "seconds": best.get("seconds", np.nan),
            "epochs": best.get("epochs", np.nan),
        }
        row.update(trial.hyperparameters.values)
        for name, value in sorted(best.items()):
            if name.startswith("val_") and name != objective:
                row[name] = value
        record_path = Path(project_dir) / f"trial_{trial.trial_id}" / TRIAL_RECORD_FILE
        record = {}
        if record_path.is_file():
            try:
                record = json.loads(record_path.read_text())
            except (OSError, json.JSONDecodeError):
                record = {}
        row["tuner_id"] = record.get("tuner_id", "")
        rows.append(row)
    columns = ["trial_id", "status", "score", "seconds", "epochs"]
    return pd.DataFrame(rows, columns=list(dict.fromkeys(columns + [k for r in rows for k in r])))


def plot_scores(table, objective: str, path) -> Path:
    """Objective of every finished trial against trial number, with the best so far."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    scores = table["score"].to_numpy(dtype=float)
    finished = np.isfinite(scores)  # failed trials have no score
    if finished.any():
        x = np.arange(1, len(scores) + 1)[finished]
        ax.plot(x, scores[finished], "o", label="trial")
        ax.step(x, np.minimum.accumulate(scores[finished]), where="post", label="best so far")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no finished trial", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="trial", ylabel=objective, title=f"search: {objective} (lower is better)")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def best_trial_config(hypermodel: DeepLenseHyperModel, trial) -> dict:
    """The experiment config of `trial` (a KerasTuner Trial) for `deeplense train --config`."""
    return hypermodel.trial_config(dict(trial.hyperparameters.values))


# --- the search --------------------------------------------------------------------------------


@dataclass
class TuneResult:
    """What `tune` leaves: the table, the best config and the files written.

    `new_trials` counts trials finished by this call (0 on a distributed worker, whose
    trials the chief counts); `best_config` is None when no trial finished.
    """

    table: object
    objective: str
    best_config: dict | None
    best_trial_id: str | None
    new_trials: int
    paths: dict


def _role() -> str:
    """"local", "chief" or "worker" from KerasTuner's environment variables."""
    ip, port, tuner_id = (os.environ.get(k) for k in
                          ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"))
    if not ip:
        return "local"
    if not port or not tuner_id:
        missing = [k for k, v in (("KERASTUNER_ORACLE_PORT", port), ("KERASTUNER_TUNER_ID", tuner_id)) if not v]
        raise ConfigError(f"KERASTUNER_ORACLE_IP is set but {' and '.join(missing)} is not")
    return "chief" if "chief" in tuner_id else "worker"


def _serve_oracle(tuner, poll_seconds: float = 0.5) -> None:
    """Run the chief's oracle over gRPC until every worker has been told to stop.

    KerasTuner's own chief loop (`search()` on the chief) re-checks only every 20 s once
    the first worker is done; this is the same server with a short poll.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    tuner.save()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(tuner.oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    if server.add_insecure_port(address) == 0:
        raise ConfigError(f"KERASTUNER_ORACLE_IP/PORT: cannot listen on {address} (port in use?)")
    server.start()
    print(f"chief: oracle listening on {address}", flush=True)
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(tuner.oracle)):
            time.sleep(poll_seconds)
    finally:
        server.stop(grace=2)


def _settings(space: SearchSpace, tuner: str, objective: str, base_config: dict) -> dict:
    return {
        "format_version": 1,
        "model": space.model,
        "tuner": tuner,
        "objective": objective,
        "space": space.to_dict(),
        "base_config": base_config,
    }


def _check_resume(out: Path, settings: dict) -> None:
    path = out / SETTINGS_FILE
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ConfigError(f"{path}: unreadable; pass --overwrite to start a new search") from None
    changed = [k for k in ("model", "tuner", "objective", "space", "base_config")
               if previous.get(k) != json.loads(json.dumps(settings[k]))]
    if changed:
        raise ConfigError(
            f"{out}: holds a search with a different {', '.join(changed)}; resume it with the "
            "same options, use another --out, or pass --overwrite to start again"
        )


def _nested(overrides: Mapping) -> dict:
    """{"training.epochs": 3} -> {"training": {"epochs": 3}}; nested mappings merge."""
    out: dict = {}
    for key, value in overrides.items():
        node = out
        parts = str(key).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = _deep_update(node[parts[-1]], _nested(value))
        else:
            node[parts[-1]] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
    return out


def _deep_update(base: dict, update: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key != "options":
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_search(data, *, model=None, space=None, config=None, overrides=None, epochs=None,
                   smoke=False, seed=None):
    """(base config, search space) of a search, every file and value checked.

    `space`: a file path, a `SearchSpace`, or None (the family's default space).
    `config`: a base experiment config file or packaged preset; `overrides` dotted keys.
    Precedence: defaults < `config` < the space's `config:` section < `overrides` and
    the arguments (`data`, `model`, `seed`, `smoke`, `epochs`).
    """
    raw_space, source = None, None
    if isinstance(space, SearchSpace):
        raw_space, source = space.to_dict(), space.source
    elif space is not None:
        source = str(space)
        if not Path(space).is_file():
            raise ConfigError(f"--space {space}: no such file")
        raw_space = read_yaml(space)
    arguments = {"data.path": str(Path(data).expanduser().resolve())}
    if seed is not None:
        arguments["seed"] = seed
    if smoke:
        arguments["smoke"] = True
    if epochs is not None:
        arguments["training.epochs"] = int(epochs)
    space_model = raw_space.get("model") if raw_space else None
    if model and space_model and model != space_model:
        raise ConfigError(f"{source}: is a space for model {space_model!r}, but --model is {model!r}")
    space_config = (raw_space or {}).get("config") or {}
    if not isinstance(space_config, Mapping):
        raise ConfigError(f"{source}: config must be a mapping of experiment-config keys")
    try:
        load_config(None, space_config)  # its own errors name the space file
    except ConfigError as err:
        raise ConfigError(f"{source} (config section): {err}") from None
    family = model or space_model
    if family:
        arguments["model.name"] = family
    merged = _deep_update(_nested(space_config), _nested({**(overrides or {}), **arguments}))
    base = load_config(config, merged)
    family = base["model"]["name"]
    if raw_space is None:
        parsed = default_search_space(family)
    else:
        parsed = parse_search_space(raw_space, family, source=source)
    if epochs is not None:  # --epochs fixes the epochs of every trial
        parsed.hyperparameters["epochs"] = Hyperparameter(
            "epochs", COMMON_KEYS["epochs"], "fixed", values=(int(epochs),), default=int(epochs))
    check_space_values(parsed, base)
    return base, parsed


def tune(data, out_dir, *, model: str | None = None, tuner: str = "random", max_trials: int | None = 10,
         space=None, epochs: int | None = None, smoke: bool = False, config=None,
         overrides: Mapping | None = None, objective: str | None = None, seed: int | None = None,
         overwrite: bool = False, progress: bool = True) -> TuneResult:
    """Search hyperparameters of one model family on a simulated data set.

    Args:
        data: the data directory (manifest + shards).
        out_dir: the search folder (see the module docstring). Re-running into the same
            folder resumes (finished trials are not repeated; `max_trials` counts them).
        model: the family; default the space file's, else the config's.
        tuner: random | hyperband | bayesian.
        max_trials: trials in all. Hyperband: a cap on its brackets' trials.
        space: a search-space file or `SearchSpace`; default the family's built-in one.
        epochs: fixes every trial's epochs (Hyperband: its largest budget).
        smoke: shrink each trial to seconds (a check, not a result).
        config, overrides: the base experiment config (file / preset, dotted keys).
        objective: a validation metric; default `default_objective`.
        seed: the experiment seed (weights, shuffling) and the tuner's.
        overwrite: delete a previous search in `out_dir` first.
        progress: tqdm bar over trials on a terminal.

    Hyperband sets each trial's epochs itself (up to the largest value of the `epochs`
    hyperparameter, or `training.epochs`) and continues promising trials from earlier
    ones' weights with a fresh schedule; its best config trains once for that many epochs.

    Distributed: with `KERASTUNER_ORACLE_IP`, `KERASTUNER_ORACLE_PORT` and
    `KERASTUNER_TUNER_ID` set, the process whose id contains "chief" serves the oracle
    and writes the results once every worker is done; the others (`tuner0`, `tuner1`
    ...) run trials. Run every process with the same arguments.
    """
    if max_trials is not None and max_trials < 1:
        raise ConfigError(f"--max-trials must be at least 1, got {max_trials}")
    if max_trials is None and tuner != "hyperband":
        raise ConfigError(f"the {tuner} tuner needs --max-trials (only hyperband ends by itself)")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    if tuner not in TUNERS:
        raise ConfigError(f"unknown tuner {tuner!r}; choose from {', '.join(TUNERS)}")
    role = _role()
    base, parsed = resolve_search(data, model=model, space=space, config=config, overrides=overrides,
                                  epochs=epochs, smoke=smoke, seed=seed)
    max_epochs = None
    if tuner == "hyperband":
        epochs_hp = parsed.hyperparameters.pop("epochs", None)
        max_epochs = int(epochs_hp.maximum()) if epochs_hp else base["training"]["epochs"]
        if base["smoke"]:
            max_epochs = min(max_epochs, apply_smoke(base)["training"]["epochs"])
    hypermodel = build_hypermodel(base, parsed, objective)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    settings = _settings(parsed, tuner, hypermodel.objective, hypermodel.base_config)
    if overwrite and role != "worker":
        for name in (SETTINGS_FILE, RESULTS_FILE, PLOT_FILE, BEST_CONFIG_FILE):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "logs", ignore_errors=True)
    elif not overwrite:
        _check_resume(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    if role != "worker":
        write_text_atomic(out / SETTINGS_FILE, json.dumps(settings, indent=1, default=str) + "\n")
    search = make_tuner(tuner, hypermodel, out, max_trials=max_trials, max_epochs=max_epochs,
                        seed=base["seed"], overwrite=overwrite and role != "worker")
    finished_before = _finished(search) if role != "worker" else 0

    callbacks = [keras.callbacks.TensorBoard(str(out / "logs"), write_graph=False,
                                             profile_batch=0)]
    if role == "chief":
        _serve_oracle(search)
    else:
        from tqdm.auto import tqdm

        total = max_trials if role == "local" else None
        remaining = None if total is None else max(total - finished_before, 0)
        if role == "worker":
            print(f"{search.tuner_id}: waiting for the chief oracle at "
                  f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}",
                  flush=True)
        elif finished_before:
            print(f"resuming {out / PROJECT_NAME}: {finished_before} trials finished, "
                  f"{remaining} to run", flush=True)
        bar = tqdm(total=remaining, desc="trials", unit="trial", file=sys.stderr,
                   disable=not (progress and sys.stderr.isatty()))
        search.progress_bar = bar
        try:
            search.search(verbose=0, callbacks=callbacks)
        except RuntimeError as err:
            if "consecutive failures" not in str(err):
                raise
            # KerasTuner stops after three failed trials in a row; its message ends with
            # the last trial's traceback, whose final line says what went wrong.
            lines = [line for line in str(err).splitlines() if line.strip()]
            raise ConfigError(
                f"{out}: three trials in a row failed, the last with: {lines[-1].strip()}"
            ) from None
        finally:
            bar.close()
            search.progress_bar = None
    if role == "worker":
        print(f"{search.tuner_id}: no trials left; the chief writes the results", flush=True)
        return TuneResult(None, hypermodel.objective, None, None, 0, {})
    return _write_results(search, hypermodel, out, finished_before)


def _finished(search) -> int:
    return sum(t.status == "COMPLETED" for t in search.oracle.trials.values())


def _write_results(search, hypermodel, out: Path, finished_before: int) -> TuneResult:
    objective = hypermodel.objective
    project = out / PROJECT_NAME
    table = results_table(project, objective)
    paths = {"results": out / RESULTS_FILE, "plot": out / PLOT_FILE, "project": project,
             "settings": out / SETTINGS_FILE}
    tmp = paths["results"].with_name(f".{RESULTS_FILE}.{os.getpid()}.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, paths["results"])
    plot_scores(table, objective, paths["plot"])
    best = search.oracle.get_best_trials(1)
    best_config, best_id = None, None
    if best and best[0].status == "COMPLETED":
        best_id = best[0].trial_id
        best_config = best_trial_config(hypermodel, best[0])
        score = best[0].metrics.get_best_value(objective)
        header = (f"# best trial {best_id} of the search in {out} ({objective} {score:.5g});\n"
                  f"# train it with: deeplense train --config {out / BEST_CONFIG_FILE} --out RUN\n")
        write_text_atomic(out / BEST_CONFIG_FILE, header + config_to_yaml(best_config))
        paths["best_config"] = out / BEST_CONFIG_FILE
    new = _finished(search) - finished_before
    return TuneResult(table, objective, best_config, best_id, new, paths)

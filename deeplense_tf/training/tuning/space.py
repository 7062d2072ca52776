"""Search spaces: what a search varies, read from `tuning/<family>.yaml` files or built from
the registry (`deeplense_tf.models.registry`: each architecture's `search_space` and
`aliases`, plus `COMMON_SPACE`, the hyperparameters every architecture has).

A space file lists exactly what is searched; everything else comes from the base config:

    model: resnet                 # the architecture (or --model)
    objective: auto               # or any validation metric, e.g. val_log10_m_axion_ev_mae
    config:                       # experiment-config keys fixed for every trial
      model: {crop: 48}
    hyperparameters:
      depth: {values: [18, 34]}                                # Choice
      learning_rate: {min: 1.0e-4, max: 3.0e-3, sampling: log} # Float (Int when all ints)
      epochs: {min: 10, max: 30, step: 10}                     # Int
      head: gaussian                                           # Fixed

Each hyperparameter's value is written to the config key it stands for
(`learning_rate` -> `training.learning_rate`, `width` -> `model.options.width`, an alias
such as cnn's `depth` -> `model.options.blocks`).
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import keras_tuner

from deeplense_tf.errors import ConfigError
from deeplense_tf.training.config import read_yaml, set_dotted, validate_config

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
    registry entry's aliases (`depth`, `width` ...) and every builder option by its own name."""
    from deeplense_tf.models import get_architecture, model_options

    entry = get_architecture(family)  # ConfigError for an unknown name
    keys = dict(COMMON_KEYS)
    for option in model_options(family):
        keys[option] = f"model.options.{option}"
    for alias, option in entry.aliases.items():
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
            set_dotted(config, h.key, value)
            try:
                validate_config(config, source=space.source)
            except ConfigError as err:
                raise ConfigError(
                    f"{space.source}: hyperparameter {h.name} value {value!r} is not valid for "
                    f"{h.key} ({str(err).removeprefix(space.source + ': ')})"
                ) from None


def default_space_dict(family: str) -> dict:
    """The built-in space of a family in space-file form: its registry entry's
    `search_space` (depth, width ...), then `COMMON_SPACE` (`tuning/<family>.yaml`)."""
    from deeplense_tf.models import get_architecture

    entry = get_architecture(family)
    return {**copy.deepcopy(dict(entry.search_space)), **copy.deepcopy(COMMON_SPACE)}


def default_search_space(family: str) -> SearchSpace:
    """The built-in space of a family (the same as `tuning/<family>.yaml`)."""
    return parse_search_space(
        {"model": family, "hyperparameters": default_space_dict(family)},
        source=f"default search space of {family}",
    )


def load_search_space(path, model: str | None = None, base_config: dict | None = None) -> SearchSpace:
    """Read a search-space YAML file (see `parse_search_space`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--space {path}: no such file")
    return parse_search_space(read_yaml(path), model, source=str(path), base_config=base_config)


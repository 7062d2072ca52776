"""The experiment config: one nested dict (YAML on disk) that holds everything a run needs.

`load_config(path, overrides)` deep-merges a YAML file and then `overrides` onto
`DEFAULT_CONFIG`, checks every key and value, applies the `smoke` switch and returns
the resolved dict. `train()` writes the resolved config (seed and data targets
included) to `RUN/config.yaml`, so `deeplense train --config RUN/config.yaml`
repeats a run.

Keys beyond the contract in docs/architecture.md, all under `training`:
`finetune_lr_factor` (learning-rate multiplier once the whole model trains after
`init_from`), `final_lr_fraction` (the cosine schedule ends at this fraction of the
peak rate), `huber_delta` (standardised units), `clip_norm` (global gradient-norm
clip, null = none), `monitor` (the validation metric for early stopping and the best
checkpoint: `val_loss`, `val_mae` or `val_<target>_mae`), `validation_steps` (null =
the whole validation split) and `bn_recalibration_batches` (training batches used to
re-estimate BatchNorm statistics after training; 0 = off) and `calibrate_variance`
(Gaussian head: scale the predicted standard deviations so that the validation
split's coverage matches the nominal levels; `deeplense_tf.models.calibration`).

The schema is typed: `ExperimentConfig` (sections `DataConfig`, `ModelConfig`,
`TrainingConfig`) holds every key with its default, its allowed types and its range
check, and `ExperimentConfig.from_dict` is the one validation (a `ConfigError` naming the
dotted key and the bad value). `DEFAULT_CONFIG` is its defaults as a dict, and
`load_config` still returns the validated nested dict that the YAML files, `--set
key=value` and `RUN/config.yaml` hold; `load_experiment` returns the dataclass.

The dotted-key helpers (`get_dotted`, `set_dotted`, `expand_dotted`, `deep_update`) are
the package's one copy; training, tuning and the benchmarks use these.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

import yaml

from deeplense_tf.errors import ConfigError
from deeplense_tf.files import read_yaml, write_text_atomic  # noqa: F401  (re-exported for config readers)

AUGMENT_MODES = ("none", "exact", "d4")
HEADS = ("gaussian", "student_t", "point", "softmax", "full_covariance")  # = deeplense_tf.models.heads.HEADS
POINT_LOSSES = ("mse", "huber")
STRATEGIES = ("default", "mirrored", "multi_worker")

# What `smoke: true` shrinks a config to: a couple of tiny epochs, seconds in all.
SMOKE_LIMITS = {
    "epochs": 2,
    "steps_per_epoch": 3,
    "batch_size": 8,
    "validation_steps": 2,
    "bn_recalibration_batches": 2,
    "warmup_epochs": 1,
}

_INT, _FLOAT, _STR, _BOOL = "int", "float", "str", "bool"


def _positive(v):
    return None if v > 0 else "must be > 0"


def _non_negative(v):
    return None if v >= 0 else "must be >= 0"


def _at_least_one(v):
    return None if v >= 1 else "must be >= 1"


def _fraction(v):
    return None if 0 <= v < 1 else "must be in [0, 1)"


def _one_of(choices):
    def check(v):
        return None if v in choices else f"must be one of {', '.join(choices)}"

    return check


def _key(default, kinds, check=None):
    """A config key: its default, the kinds it may take ("null" allows None) and a range
    check `check(value) -> problem or None`."""
    metadata = {"kinds": kinds, "check": check}
    if isinstance(default, dict | list):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    path: str | None = _key(None, (_STR, "null"))
    targets: list[str] | None = _key(None, ("list[str]", "null"))
    augment: str = _key("d4", (_STR,), _one_of(AUGMENT_MODES))
    cache: bool = _key(True, (_BOOL,))
    # Fewer labelled training examples than the split holds (data-size learning curves,
    # few-shot tables): the first ones in the split's reading order.
    train_limit: int | None = _key(None, (_INT, "null"), _at_least_one)
    train_per_class: int | None = _key(None, (_INT, "null"), _at_least_one)  # a classifier's


@dataclass
class ModelConfig:
    name: str = _key("resnet", (_STR,))
    head: str = _key("gaussian", (_STR,), _one_of(HEADS))
    normalization: str = _key("peak_asinh", (_STR,))
    crop: int | None = _key(48, (_INT, "null"), _at_least_one)
    options: dict = _key({}, ("dict",))  # free-form: the builder's keyword arguments


@dataclass
class TrainingConfig:
    epochs: int = _key(30, (_INT,), _at_least_one)
    batch_size: int = _key(64, (_INT,), _at_least_one)
    learning_rate: float = _key(1.0e-3, (_FLOAT,), _positive)
    weight_decay: float = _key(1.0e-4, (_FLOAT,), _non_negative)
    warmup_epochs: float = _key(1, (_FLOAT,), _non_negative)
    point_loss: str = _key("huber", (_STR,), _one_of(POINT_LOSSES))
    early_stopping_patience: int | None = _key(10, (_INT, "null"), _at_least_one)
    mixed_precision: bool = _key(False, (_BOOL,))
    jit_compile: bool = _key(False, (_BOOL,))  # XLA for the training step's forward and backward pass
    strategy: str = _key("default", (_STR,), _one_of(STRATEGIES))
    steps_per_epoch: int | None = _key(None, (_INT, "null"), _at_least_one)
    time_budget_minutes: float | None = _key(None, (_FLOAT, "null"), _positive)
    init_from: str | None = _key(None, (_STR, "null"))
    freeze_encoder_epochs: int = _key(0, (_INT,), _non_negative)
    finetune_lr_factor: float = _key(0.1, (_FLOAT,), _positive)
    final_lr_fraction: float = _key(0.0, (_FLOAT,), _fraction)
    huber_delta: float = _key(1.0, (_FLOAT,), _positive)
    clip_norm: float | None = _key(None, (_FLOAT, "null"), _positive)
    monitor: str = _key("val_loss", (_STR,))
    validation_steps: int | None = _key(None, (_INT, "null"), _at_least_one)
    bn_recalibration_batches: int = _key(50, (_INT,), _non_negative)
    calibrate_variance: bool = _key(True, (_BOOL,))


@dataclass
class ExperimentConfig:
    """A whole experiment config, typed. `from_dict` validates; `to_dict` is the YAML form."""

    seed: int = _key(0, (_INT,), _non_negative)
    smoke: bool = _key(False, (_BOOL,))
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict:
        """The nested dict of `RUN/config.yaml` (key order: the fields')."""
        return asdict(self)

    @classmethod
    def from_dict(cls, config: Mapping, source: str = "config") -> ExperimentConfig:
        """The one validation: every key known, every value of its kind and in range,
        and the rules that tie keys together. Numbers are normalised (`1e-3` read as a
        string by YAML 1.1 is the float it means, an int learning rate a float).

        Raises:
            ConfigError "<source>: <dotted key> <problem>, got <value>".
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"{source}: must be a mapping of keys, got {type(config).__name__}")
        values = {}
        for section in fields(cls):
            if section.name in _SECTIONS:
                node = config.get(section.name)
                if not isinstance(node, Mapping):
                    raise ConfigError(f"{source}: {section.name} is a section; give it a mapping of keys")
                section_cls = _SECTIONS[section.name]
                for key in node:
                    if key not in _FIELD_NAMES[section.name]:
                        raise ConfigError(_unknown_key_message(f"{section.name}.{key}", source))
                values[section.name] = section_cls(**{
                    f.name: _check_value(f"{section.name}.{f.name}", f, node.get(f.name), source)
                    for f in fields(section_cls)
                })
            else:
                values[section.name] = _check_value(section.name, section, config.get(section.name), source)
        for key in config:
            if key not in _FIELD_NAMES[""]:
                raise ConfigError(_unknown_key_message(key, source))
        experiment = cls(**values)
        experiment._check_rules(source)
        return experiment

    def _check_rules(self, source: str) -> None:
        for name in self.model.options:
            if not isinstance(name, str):
                raise ConfigError(f"{source}: model.options keys must be strings, got {name!r}")
        _check_names(self, source)
        t = self.training
        if t.freeze_encoder_epochs and not t.init_from:
            raise ConfigError(
                f"{source}: training.freeze_encoder_epochs needs training.init_from "
                "(freezing a randomly initialised encoder trains only the head)"
            )
        if t.freeze_encoder_epochs > t.epochs:
            raise ConfigError(
                f"{source}: training.freeze_encoder_epochs ({t.freeze_encoder_epochs}) is more "
                f"than training.epochs ({t.epochs})"
            )
        if self.model.head == "softmax":
            _check_classifier(self, source)
        elif self.data.train_per_class is not None:
            raise ConfigError(
                f"{source}: data.train_per_class counts examples per substructure class, which only "
                "a classifier (model.head softmax) has; a regressor takes data.train_limit"
            )
        monitor = t.monitor
        if not (monitor in ("val_loss", "val_mae") or (monitor.startswith("val_") and monitor.endswith("_mae"))):
            raise ConfigError(
                f"{source}: training.monitor must be val_loss, val_mae or val_<target>_mae, got {monitor!r}"
            )


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "training": TrainingConfig}
_FIELD_NAMES = {"": [f.name for f in fields(ExperimentConfig)],
                **{name: [f.name for f in fields(cls)] for name, cls in _SECTIONS.items()}}

#: The defaults as the nested dict the YAML files hold (configs/default.yaml is this).
DEFAULT_CONFIG: dict = ExperimentConfig().to_dict()

# Sections whose keys are free-form (builder keyword arguments).
_FREE_FORM = ("model.options",)


def packaged_config_names() -> list[str]:
    """Names of the presets shipped in `deeplense_tf/configs/` (usable as `load_config(name)`)."""
    folder = resources.files("deeplense_tf") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _resolve_path(path) -> Path:
    """A YAML file path, or the name of a packaged preset (`quickstart`, `smoke`, ...)."""
    p = Path(path)
    if p.is_file():
        return p
    if p.suffix == "" and not p.parent.parts:
        packaged = resources.files("deeplense_tf") / "configs" / f"{p.name}.yaml"
        if packaged.is_file():
            return Path(str(packaged))
    if p.exists():
        raise ConfigError(f"config {path}: not a file")
    raise ConfigError(
        f"config {path}: no such file (packaged presets: {', '.join(packaged_config_names())})"
    )


# --- dotted keys: the package's one copy ---------------------------------------------------


def get_dotted(config: Mapping, dotted: str, default=None):
    """`get_dotted(config, "training.epochs")`; `default` when a part is missing."""
    node = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def set_dotted(config: dict, dotted: str, value) -> None:
    """`set_dotted(config, "model.options.width", 16)`, in place; missing sections are made."""
    node = config
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part} is set both as a value and a section")
    node[parts[-1]] = value


class WholeSection(dict):
    """A free-form section given whole by a dotted key (`--set model.options={}`): `_merge`
    replaces the section with it instead of merging, so a user can clear or swap a
    builder's options; keys below it (`model.options.width=32`) still merge."""


def expand_dotted(overrides: Mapping) -> dict:
    """{"training.epochs": 3} -> {"training": {"epochs": 3}}; nested mappings are expanded
    too and merge with what dotted keys set in the same section. A dotted key naming a
    free-form section (`model.options`) with a mapping becomes a `WholeSection`; later
    keys inside it add to it (overrides apply in order)."""
    out: dict = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is set both as a value and a section")
        if isinstance(value, Mapping) and str(key) in _FREE_FORM:
            node[parts[-1]] = WholeSection(copy.deepcopy(dict(value)))
        elif isinstance(value, Mapping):
            node[parts[-1]] = deep_update(node.get(parts[-1], {}), expand_dotted(value))
        else:
            node[parts[-1]] = copy.deepcopy(value)
    return out


def deep_update(base, update: Mapping, *, replace: tuple = ()) -> dict:
    """A copy of `base` (a dict, else {}) with `update` merged in, section by section.

    Keys named in `replace` take `update`'s value whole instead of being merged (the
    tuner: `model.options` given on the command line replace a space file's options).
    """
    out = copy.deepcopy(base) if isinstance(base, dict) else {}
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key not in replace:
            out[key] = deep_update(out[key], value, replace=replace)
        else:
            # A WholeSection keeps its type: `_merge` must still replace with it.
            whole = isinstance(value, WholeSection) or not isinstance(value, Mapping)
            out[key] = copy.deepcopy(value if whole else dict(value))
    return out


def _merge(base: dict, update: Mapping, prefix: str = "", source: str = "config", free=False):
    """Deep-merge `update` into a copy of `base`; unknown keys raise ConfigError.

    Below a free-form section (`model.options`) any key is accepted.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if not free and key not in base:
            raise ConfigError(_unknown_key_message(dotted, source))
        if isinstance(value, WholeSection):
            out[key] = copy.deepcopy(dict(value))
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            out[key] = _merge(base[key], value, dotted + ".", source, free or dotted in _FREE_FORM)
        elif isinstance(base.get(key), dict) and not free and dotted not in _FREE_FORM:
            raise ConfigError(f"{source}: {dotted} is a section; give it a mapping of keys")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _unknown_key_message(dotted: str, source: str) -> str:
    section, _, _ = dotted.rpartition(".")
    node = get_dotted(DEFAULT_CONFIG, section, {}) if section else DEFAULT_CONFIG
    choices = [f"{section}.{k}" if section else k for k in node] if isinstance(node, dict) else []
    close = difflib.get_close_matches(dotted, choices, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{source}: unknown config key {dotted}{hint}; known keys here: {', '.join(choices)}"


def _check_value(key: str, spec, value, source: str):
    kinds, check = spec.metadata["kinds"], spec.metadata["check"]
    if value is None:
        if "null" in kinds:
            return None
        raise ConfigError(f"{source}: {key} must not be null")
    converted = _convert(value, kinds)
    if converted is _BAD:
        wanted = " or ".join("null" if k == "null" else k for k in kinds)
        raise ConfigError(f"{source}: {key} must be {wanted}, got {value!r}")
    if check is not None and not isinstance(converted, list | dict):
        problem = check(converted)
        if problem:
            raise ConfigError(f"{source}: {key} {problem}, got {value!r}")
    return copy.deepcopy(converted)


_BAD = object()


def _convert(value, kinds):
    for kind in kinds:
        if kind == _BOOL and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue  # True is an int in Python, never a number in a config
        if kind == _INT and isinstance(value, int):
            return value
        if kind == _FLOAT:
            if isinstance(value, int | float):
                return float(value)
            # YAML 1.1 reads `1e-3` (no dot) as a string; accept it as the number it means.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
        if kind == _STR and isinstance(value, str):
            return value
        if kind == "list[str]" and isinstance(value, list | tuple):
            if value and all(isinstance(v, str) for v in value):
                return list(value)
        if kind == "dict" and isinstance(value, dict):
            return value
    return _BAD


def validate_config(config: Mapping, source: str = "config") -> dict:
    """Check every key and value of a full config (`ExperimentConfig.from_dict`); returns
    a new dict with numbers normalised."""
    return ExperimentConfig.from_dict(config, source).to_dict()


def _check_names(config: ExperimentConfig, source: str):
    """Model and normalisation names, checked against the modules that define them."""
    from deeplense_tf.data.transforms import NORMALIZATIONS

    norm = config.model.normalization
    if norm not in NORMALIZATIONS:
        raise ConfigError(
            f"{source}: model.normalization must be one of {', '.join(NORMALIZATIONS)}, got {norm!r}"
        )
    try:
        from deeplense_tf.models import MODEL_NAMES
    except ImportError:  # the models package checks the name itself when it builds
        return
    name = config.model.name
    if name not in MODEL_NAMES:
        raise ConfigError(f"{source}: unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")


def _check_classifier(config: ExperimentConfig, source: str) -> None:
    """`model.head: softmax` classifies the data's class labels: the regression-only keys
    that would silently do nothing are refused instead."""
    from deeplense_tf.data.schema import CLASS_TARGET

    targets = config.data.targets
    if targets is not None and targets != [CLASS_TARGET]:
        raise ConfigError(
            f"{source}: data.targets {targets} with model.head softmax: a classifier predicts "
            "the class label the data hold; leave data.targets null"
        )
    if config.training.monitor != "val_loss":
        raise ConfigError(
            f"{source}: training.monitor {config.training.monitor!r} is a regression metric; "
            "model.head softmax monitors val_loss (the validation cross-entropy)"
        )


def apply_smoke(config: dict) -> dict:
    """Shrink a config to seconds of work (tests, CI): see SMOKE_LIMITS. Idempotent."""
    out = copy.deepcopy(config)
    t = out["training"]
    for key, limit in SMOKE_LIMITS.items():
        t[key] = limit if t[key] is None else min(t[key], limit)
    t["freeze_encoder_epochs"] = min(t["freeze_encoder_epochs"], max(t["epochs"] - 1, 0))
    # A partly read in-memory cache is thrown away anyway; skip filling it.
    out["data"]["cache"] = False
    return out


def load_config(path=None, overrides: Mapping | None = None) -> dict:
    """The resolved experiment config.

    Args:
        path: a YAML file, a packaged preset name (see `packaged_config_names()`), or
            None for `DEFAULT_CONFIG` alone. The file may hold only the keys it changes.
        overrides: applied last; nested (`{"training": {"epochs": 3}}`) or dotted
            (`{"training.epochs": 3}`) keys.

    Returns:
        A new dict with every key of `DEFAULT_CONFIG`, validated; `smoke: true` has
        already shrunk epochs, steps and batches.

    Raises:
        ConfigError naming the dotted key (and file) for unknown keys, wrong types and
        out-of-range values.
    """
    config = copy.deepcopy(DEFAULT_CONFIG)
    source = "config"
    if path is not None:
        resolved = _resolve_path(path)
        source = f"config {path}"
        config = _merge(config, read_yaml(resolved), source=source)
    if overrides:
        config = _merge(config, expand_dotted(overrides), source="override")
    config = validate_config(config, source=source)
    if config["smoke"]:
        config = apply_smoke(config)
    return config


def load_experiment(path=None, overrides: Mapping | None = None) -> ExperimentConfig:
    """`load_config(path, overrides)` as the typed `ExperimentConfig`."""
    return ExperimentConfig.from_dict(load_config(path, overrides))


def config_to_yaml(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def save_config(config: dict, path) -> Path:
    """Write `config` as YAML, atomically (a reader never sees half a file)."""
    path = Path(path)
    write_text_atomic(path, config_to_yaml(config))
    return path


get = get_dotted  # the name notebooks and scripts written before get_dotted use


def diff_configs(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs."""
    keys = []
    for key in sorted(set(a) | set(b)):
        dotted = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict) and dotted not in _FREE_FORM:
            keys.extend(diff_configs(va, vb, dotted + "."))
        elif va != vb:
            keys.append(dotted)
    return keys

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
split's coverage matches the nominal levels; `deeplense_tf.evaluation.calibration`).
"""

from __future__ import annotations

import copy
import difflib
import os
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import yaml

from deeplense_tf.errors import ConfigError

DEFAULT_CONFIG: dict = {
    "seed": 0,
    "smoke": False,
    "data": {
        "path": None,
        "targets": None,
        "augment": "d4",
        "cache": True,
    },
    "model": {
        "name": "resnet",
        "head": "gaussian",
        "normalization": "peak_asinh",
        "crop": 48,
        "options": {},
    },
    "training": {
        "epochs": 30,
        "batch_size": 64,
        "learning_rate": 1.0e-3,
        "weight_decay": 1.0e-4,
        "warmup_epochs": 1,
        "point_loss": "huber",
        "early_stopping_patience": 10,
        "mixed_precision": False,
        "strategy": "default",
        "steps_per_epoch": None,
        "time_budget_minutes": None,
        "init_from": None,
        "freeze_encoder_epochs": 0,
        "finetune_lr_factor": 0.1,
        "final_lr_fraction": 0.0,
        "huber_delta": 1.0,
        "clip_norm": None,
        "monitor": "val_loss",
        "validation_steps": None,
        "bn_recalibration_batches": 50,
        "calibrate_variance": True,
    },
}

AUGMENT_MODES = ("none", "exact", "d4")
HEADS = ("gaussian", "point")
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

# dotted key -> (allowed kinds, check(value) -> problem or None). "null" allows None.
_SPEC: dict[str, tuple[tuple[str, ...], object]] = {}


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


def _spec(key, kinds, check=None):
    _SPEC[key] = (kinds, check)


_spec("seed", (_INT,), _non_negative)
_spec("smoke", (_BOOL,))
_spec("data.path", (_STR, "null"))
_spec("data.targets", ("list[str]", "null"))
_spec("data.augment", (_STR,), _one_of(AUGMENT_MODES))
_spec("data.cache", (_BOOL,))
_spec("model.name", (_STR,))
_spec("model.head", (_STR,), _one_of(HEADS))
_spec("model.normalization", (_STR,))
_spec("model.crop", (_INT, "null"), _at_least_one)
_spec("model.options", ("dict",))
_spec("training.epochs", (_INT,), _at_least_one)
_spec("training.batch_size", (_INT,), _at_least_one)
_spec("training.learning_rate", (_FLOAT,), _positive)
_spec("training.weight_decay", (_FLOAT,), _non_negative)
_spec("training.warmup_epochs", (_FLOAT,), _non_negative)
_spec("training.point_loss", (_STR,), _one_of(POINT_LOSSES))
_spec("training.early_stopping_patience", (_INT, "null"), _at_least_one)
_spec("training.mixed_precision", (_BOOL,))
_spec("training.strategy", (_STR,), _one_of(STRATEGIES))
_spec("training.steps_per_epoch", (_INT, "null"), _at_least_one)
_spec("training.time_budget_minutes", (_FLOAT, "null"), _positive)
_spec("training.init_from", (_STR, "null"))
_spec("training.freeze_encoder_epochs", (_INT,), _non_negative)
_spec("training.finetune_lr_factor", (_FLOAT,), _positive)
_spec("training.final_lr_fraction", (_FLOAT,), _fraction)
_spec("training.huber_delta", (_FLOAT,), _positive)
_spec("training.clip_norm", (_FLOAT, "null"), _positive)
_spec("training.monitor", (_STR,))
_spec("training.validation_steps", (_INT, "null"), _at_least_one)
_spec("training.bn_recalibration_batches", (_INT,), _non_negative)
_spec("training.calibrate_variance", (_BOOL,))

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


def read_yaml(path) -> dict:
    """Read one YAML mapping; ConfigError naming the file when it is not one."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"config {path}: cannot read it ({err.strerror})") from err
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path}: not valid YAML ({err})") from err
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {path}: must be a mapping of keys, got {type(loaded).__name__}")
    return loaded


def _expand_dotted(overrides: Mapping) -> dict:
    """{"training.epochs": 3} -> {"training": {"epochs": 3}}; nested dicts pass through."""
    out: dict = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is set both as a value and a section")
        if isinstance(value, Mapping):
            node[parts[-1]] = _plain_update(node.get(parts[-1], {}), _expand_dotted(value))
        else:
            node[parts[-1]] = value
    return out


def _plain_update(base, update: Mapping) -> dict:
    out = dict(base) if isinstance(base, dict) else {}
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _plain_update(out[key], value)
        else:
            out[key] = value
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
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            out[key] = _merge(base[key], value, dotted + ".", source, free or dotted in _FREE_FORM)
        elif isinstance(base.get(key), dict) and not free and dotted not in _FREE_FORM:
            raise ConfigError(f"{source}: {dotted} is a section; give it a mapping of keys")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _unknown_key_message(dotted: str, source: str) -> str:
    section, _, _ = dotted.rpartition(".")
    node = DEFAULT_CONFIG
    for part in section.split(".") if section else ():
        node = node.get(part, {}) if isinstance(node, dict) else {}
    choices = [f"{section}.{k}" if section else k for k in node] if isinstance(node, dict) else []
    close = difflib.get_close_matches(dotted, choices, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{source}: unknown config key {dotted}{hint}; known keys here: {', '.join(choices)}"


def _check_value(key: str, value, source: str):
    kinds, check = _SPEC[key]
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
    return converted


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


def validate_config(config: dict, source: str = "config") -> dict:
    """Check every key and value of a full config; returns a copy with numbers normalised."""
    out = copy.deepcopy(config)
    for key in _SPEC:
        section, _, name = key.rpartition(".")
        node = out[section] if section else out
        node[name] = _check_value(key, node.get(name), source)
    for key, value in out.items():
        if key not in DEFAULT_CONFIG:
            raise ConfigError(_unknown_key_message(key, source))
        if isinstance(DEFAULT_CONFIG[key], dict):
            unknown = sorted(set(value) - set(DEFAULT_CONFIG[key]))
            if unknown:
                raise ConfigError(_unknown_key_message(f"{key}.{unknown[0]}", source))
    for name in out["model"]["options"]:
        if not isinstance(name, str):
            raise ConfigError(f"{source}: model.options keys must be strings, got {name!r}")
    _check_names(out, source)
    t = out["training"]
    if t["freeze_encoder_epochs"] and not t["init_from"]:
        raise ConfigError(
            f"{source}: training.freeze_encoder_epochs needs training.init_from "
            "(freezing a randomly initialised encoder trains only the head)"
        )
    if t["freeze_encoder_epochs"] > t["epochs"]:
        raise ConfigError(
            f"{source}: training.freeze_encoder_epochs ({t['freeze_encoder_epochs']}) is more "
            f"than training.epochs ({t['epochs']})"
        )
    monitor = t["monitor"]
    if not (monitor in ("val_loss", "val_mae") or (monitor.startswith("val_") and monitor.endswith("_mae"))):
        raise ConfigError(
            f"{source}: training.monitor must be val_loss, val_mae or val_<target>_mae, got {monitor!r}"
        )
    return out


def _check_names(config: dict, source: str):
    """Model and normalisation names, checked against the modules that define them."""
    from deeplense_tf.data.transforms import NORMALIZATIONS

    norm = config["model"]["normalization"]
    if norm not in NORMALIZATIONS:
        raise ConfigError(
            f"{source}: model.normalization must be one of {', '.join(NORMALIZATIONS)}, got {norm!r}"
        )
    try:
        from deeplense_tf.models import MODEL_NAMES
    except ImportError:  # the models package checks the name itself when it builds
        return
    name = config["model"]["name"]
    if name not in MODEL_NAMES:
        raise ConfigError(f"{source}: unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")


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
        config = _merge(config, _expand_dotted(overrides), source="override")
    config = validate_config(config, source=source)
    if config["smoke"]:
        config = apply_smoke(config)
    return config


def config_to_yaml(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def save_config(config: dict, path) -> Path:
    """Write `config` as YAML, atomically (a reader never sees half a file)."""
    path = Path(path)
    write_text_atomic(path, config_to_yaml(config))
    return path


def write_text_atomic(path, text: str):
    """Write `text` to `path` via a temporary file in the same folder and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def get(config: dict, dotted: str):
    """`get(config, "training.epochs")`."""
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


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

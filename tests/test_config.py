"""The typed experiment config (`ExperimentConfig`) and the one copy of the dotted-key helpers.

The nested dict stays what files hold: the resolved config a run folder has had since
format 1 loads unchanged, and it is written back with the same keys in the same order.
"""

from __future__ import annotations

import pytest
import yaml

from deeplense_tf.errors import ConfigError
from deeplense_tf.training.config import (
    DEFAULT_CONFIG,
    ExperimentConfig,
    TrainingConfig,
    config_to_yaml,
    deep_update,
    expand_dotted,
    get_dotted,
    load_config,
    load_experiment,
    set_dotted,
    validate_config,
)

# RUN/config.yaml as `deeplense train` wrote it before the config was typed (trimmed of
# nothing: every key, in the order it was written).
OLD_RUN_CONFIG = """\
seed: 3
smoke: false
data:
  path: /data/model2
  targets:
  - log10_m_axion_ev
  augment: d4
  cache: true
model:
  name: cnn
  head: gaussian
  normalization: peak_asinh
  crop: 48
  options:
    width: 16
    blocks: 3
training:
  epochs: 12
  batch_size: 32
  learning_rate: 0.002
  weight_decay: 0.0001
  warmup_epochs: 1.0
  point_loss: huber
  early_stopping_patience: 10
  mixed_precision: false
  strategy: default
  steps_per_epoch: null
  time_budget_minutes: 45.0
  init_from: null
  freeze_encoder_epochs: 0
  finetune_lr_factor: 0.1
  final_lr_fraction: 0.0
  huber_delta: 1.0
  clip_norm: null
  monitor: val_loss
  validation_steps: null
  bn_recalibration_batches: 50
  calibrate_variance: true
"""


def test_defaults_are_the_dataclass_defaults():
    assert ExperimentConfig().to_dict() == DEFAULT_CONFIG
    assert list(DEFAULT_CONFIG) == ["seed", "smoke", "data", "model", "training"]
    assert DEFAULT_CONFIG["training"]["epochs"] == TrainingConfig().epochs == 30


def test_an_existing_run_config_loads_and_writes_back_unchanged(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(OLD_RUN_CONFIG)
    config = load_config(path)
    # Same keys, order and values; keys added since (the data.train_* limits,
    # training.jit_compile) take their defaults.
    added = "  cache: true\n  train_limit: null\n  train_per_class: null\n"
    expected = OLD_RUN_CONFIG.replace("  cache: true\n", added).replace(
        "  mixed_precision: false\n", "  mixed_precision: false\n  jit_compile: false\n")
    assert config_to_yaml(config) == expected
    typed = load_experiment(path)
    assert typed.training.time_budget_minutes == 45.0 and typed.model.options == {"width": 16, "blocks": 3}
    assert typed.data.targets == ["log10_m_axion_ev"]
    assert ExperimentConfig.from_dict(typed.to_dict()) == typed


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("training.learning_rate", "fast", "training.learning_rate must be float, got 'fast'"),
        ("training.batch_size", 0, "training.batch_size must be >= 1, got 0"),
        ("data.augment", "d8", "data.augment must be one of none, exact, d4, got 'd8'"),
        ("model.crop", True, "model.crop must be int or null, got True"),
        ("training.lerning_rate", 0.1, "unknown config key training.lerning_rate (did you mean training.learning_rate?)"),
    ],
)
def test_one_validation_names_the_key_and_value(key, value, message):
    config = yaml.safe_load(OLD_RUN_CONFIG)
    set_dotted(config, key, value)
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict(config, source="run.yaml")
    assert str(err.value).startswith("run.yaml: ") and message in str(err.value)
    with pytest.raises(ConfigError, match="run.yaml: "):
        validate_config(config, source="run.yaml")  # the same validation behind the dict API


def test_dotted_helpers():
    config = {"training": {"epochs": 3}, "model": {"options": {"width": 8}}}
    assert get_dotted(config, "training.epochs") == 3
    assert get_dotted(config, "training.nope") is None and get_dotted(config, "a.b", 7) == 7
    set_dotted(config, "model.options.blocks", 2)
    set_dotted(config, "data.path", "D")
    assert config["model"]["options"] == {"width": 8, "blocks": 2} and config["data"] == {"path": "D"}
    with pytest.raises(ConfigError, match="training.epochs.x: epochs is set both as a value and a section"):
        set_dotted(config, "training.epochs.x", 1)

    assert expand_dotted({"training.epochs": 3, "training": {"batch_size": 8}, "model.options.width": 4}) == {
        "training": {"epochs": 3, "batch_size": 8}, "model": {"options": {"width": 4}}}
    with pytest.raises(ConfigError, match="set both as a value and a section"):
        expand_dotted({"training": 3, "training.epochs": 4})

    base = {"model": {"crop": 48, "options": {"width": 8, "blocks": 2}}}
    merged = deep_update(base, {"model": {"options": {"width": 16}}})
    assert merged["model"] == {"crop": 48, "options": {"width": 16, "blocks": 2}}
    replaced = deep_update(base, {"model": {"options": {"width": 16}}}, replace=("options",))
    assert replaced["model"] == {"crop": 48, "options": {"width": 16}}
    assert base["model"]["options"] == {"width": 8, "blocks": 2}  # inputs are not changed


def test_a_dotted_free_form_section_replaces_and_keys_below_it_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: cnn_lstm, options: {view: polar, width: 32}}\n")
    assert load_config(path, {"model.options.width": 8})["model"]["options"] == {"view": "polar", "width": 8}
    # `--set model.options={}` clears the file's options (switching builders needs it) ...
    assert load_config(path, {"model.name": "cnn", "model.options": {}})["model"]["options"] == {}
    # ... and keys after it add to the replacement: overrides apply in order.
    swapped = load_config(path, {"model.options": {"width": 4}, "model.options.lstm_units": 16})
    assert swapped["model"]["options"] == {"width": 4, "lstm_units": 16}
    # A nested mapping (as a YAML file or a notebook gives it) still merges.
    nested = load_config(path, {"model": {"options": {"width": 4}}})
    assert nested["model"]["options"] == {"view": "polar", "width": 4}

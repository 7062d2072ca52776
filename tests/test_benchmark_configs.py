"""The issue-16 benchmark configs (Model I on the CPU, Models II and III on a GPU): each
loads and validates, builds its model at its preset's image shape, and its header holds
commands that `deeplense` parses, simulate the preset the file is named after, and train
this very file on the data they simulate. Nothing trains."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from deeplense_tf.simulation.presets import get_preset
from deeplense_tf.training.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NAMES = ["benchmark-model1-cnn_lstm", "benchmark-model2-cnn_lstm-gpu", "benchmark-model3-cnn_lstm-gpu",
         "benchmark-model2-resnet-gpu"]


def header_commands(path: Path) -> dict:
    """`{sub-command: argv}` of the `#   deeplense ...` lines at the top of a config."""
    commands = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        match = re.match(r"#\s+(deeplense\s.*)$", line)
        if match:
            argv = shlex.split(match.group(1))[1:]
            commands[argv[0]] = argv
    return commands


def option(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.mark.parametrize("name", NAMES)
def test_config_loads_and_its_header_runs_it(name):
    from deeplense_tf.cli import build_parser

    path = CONFIGS / f"{name}.yaml"
    config = load_config(path)
    commands = header_commands(path)
    assert {"simulate", "train"} <= set(commands), f"{name}: header lacks the simulate / train commands"
    for command, argv in commands.items():
        build_parser(only=command).parse_args(argv)  # an unknown option exits: the test fails
    simulate, train = commands["simulate"], commands["train"]
    preset = option(simulate, "--preset")
    model_number = re.search(r"model(\d)", name).group(1)
    assert preset == f"deeplense-model-{model_number}"
    assert option(train, "--config") == f"configs/{name}.yaml"
    data = option(train, "--data") or config["data"]["path"]
    assert data == option(simulate, "--out") == config["data"]["path"]
    if "--classes" in simulate:
        assert option(simulate, "--classes") == "axion"


@pytest.mark.parametrize("name", NAMES)
def test_config_builds_its_model(name):
    from deeplense_tf.training.model_setup import build_model_from_config

    config = load_config(CONFIGS / f"{name}.yaml")
    preset = get_preset(option(header_commands(CONFIGS / f"{name}.yaml")["simulate"], "--preset"))
    shape = (preset.instrument.num_pix, preset.instrument.num_pix, 1)
    model = build_model_from_config(config, shape, config["data"]["targets"])
    assert tuple(model.input_shape[1:]) == shape
    assert model.count_params() > 0


@pytest.mark.parametrize("name", [n for n in NAMES if n.endswith("-gpu")])
def test_gpu_configs_use_the_gpu_settings(name):
    training = load_config(CONFIGS / f"{name}.yaml")["training"]
    assert training["mixed_precision"] is True
    assert training["strategy"] == "mirrored"
    assert training["batch_size"] >= 256

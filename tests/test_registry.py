"""The model registry: one `register` call holds an architecture's builder, search space,
tiny test options and int8 export rule, and every command picks it up.

The test registers a two-layer MLP of its own and runs it through `deeplense train`,
`deeplense tune`, `deeplense export` (int8 included) and `deeplense cluster` on 16x16
blobs: seconds per step.
"""

from __future__ import annotations

import contextlib
import io
import json

import keras
import pytest
from data_fixtures import write_dataset

from deeplense_tf.cli import main
from deeplense_tf.errors import ConfigError
from deeplense_tf.models import (
    MODEL_NAMES,
    build_model,
    get_architecture,
    int8_float_layer_names,
    model_options,
    register,
    tiny_options,
    unregister,
)

NAME = "test_mlp"
TARGET = "theta_e_arcsec"


def build_test_mlp(x, *, width: int = 16, layers: int = 2):
    """Flatten -> `layers` x Dense(width) -> LayerNormalization named `mlp_norm`."""
    x = keras.layers.Flatten(name="mlp_flatten")(x)
    for i in range(layers):
        x = keras.layers.Dense(width, activation="relu", name=f"mlp_dense{i}")(x)
    return keras.layers.LayerNormalization(name="mlp_norm")(x)


@pytest.fixture
def registered():
    register(NAME, build_test_mlp, aliases={"depth": "layers"},
             search_space={"width": {"values": [4, 8]}, "depth": {"values": [1, 2]}},
             tiny={"width": 4, "layers": 1}, int8_float_layers=("mlp_norm",))
    yield get_architecture(NAME)
    unregister(NAME)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("registry-data"), counts={"train": 32, "val": 8, "test": 8})


def quiet(argv) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    return code, buffer.getvalue()


def test_builtin_entries_hold_space_tiny_options_and_aliases():
    for name in ("cnn", "resnet", "efficientnet", "vit", "cnn_lstm"):
        entry = get_architecture(name)
        assert entry.search_space, name
        options = model_options(name)
        assert set(entry.tiny) <= set(options), name
        assert set(entry.aliases.values()) <= set(options), name
        # Every searched name is an option or an alias of one.
        assert set(entry.search_space) <= set(options) | set(entry.aliases), name
    assert get_architecture("cnn").aliases == {"depth": "blocks"}
    with pytest.raises(ConfigError, match="unknown model 'alexnet'; choose from cnn"):
        get_architecture("alexnet")


def test_register_checks_the_entry(registered):
    assert NAME in MODEL_NAMES and tiny_options(NAME) == {"width": 4, "layers": 1}
    register(NAME, build_test_mlp)  # the same builder again: no error, entry replaced
    with pytest.raises(ValueError, match="already registered"):
        register(NAME, lambda x: x)
    with pytest.raises(ValueError, match="alias 'depth' names 'blocks', not an option"):
        register("test_bad", build_test_mlp, aliases={"depth": "blocks"})
    with pytest.raises(ValueError, match="tiny option 'units' is not an option"):
        register("test_bad", build_test_mlp, tiny={"units": 3})
    assert "test_bad" not in MODEL_NAMES


def test_int8_rule_adds_the_entry_layers(registered):
    model = build_model(NAME, (16, 16, 1), [TARGET], crop=None, **tiny_options(NAME))
    assert int8_float_layer_names(model) == {"preprocess", "mlp_flatten", "mlp_norm", TARGET}
    # Nested (an ensemble member): the member's own entry applies.
    outer = keras.Model(model.inputs, model(model.inputs), name="outer")
    assert "mlp_norm" in int8_float_layer_names(outer)


def test_a_registered_model_trains_tunes_exports_and_clusters(registered, data_dir, tmp_path):
    common = ["--set", f"data.targets=[{TARGET}]", "--set", "model.crop=null",
              "--set", "model.normalization=none"]
    code, printed = quiet(["train", "--data", str(data_dir), "--model", NAME, "--out", str(tmp_path / "run"),
                           "--smoke", "--set", "model.options={width: 4, layers: 1}", *common])
    assert code == 0, printed

    # The tuner's built-in space of the new model: its entry's part plus the common one.
    code, printed = quiet(["tune", "--data", str(data_dir), "--model", NAME, "--out", str(tmp_path / "tune"),
                           "--max-trials", "1", "--smoke", *common])
    assert code == 0, printed
    settings = json.loads((tmp_path / "tune" / "tune.json").read_text())
    searched = settings["space"]["hyperparameters"]
    assert searched["width"] == {"values": [4, 8]} and searched["depth"] == {"values": [1, 2]}
    assert {"learning_rate", "dropout", "head"} <= set(searched)
    trial = next((tmp_path / "tune" / "search").glob("trial_*"))
    assert json.loads((trial / "run.json").read_text())["model"] == NAME

    # The trial's folder is a run folder: export it (int8 keeps the entry's layer float).
    out = tmp_path / "export"
    code, printed = quiet(["export", "--run", str(trial), "--out", str(out), "--tflite", "int8"])
    assert code == 0, printed
    report = json.loads(next(out.glob("deeplense/*/export.json")).read_text())
    assert "mlp_norm" in report["checks"]["tflite"]["int8"]["float_layers"]

    code, printed = quiet(["cluster", "--run", str(tmp_path / "run"), "--data", str(data_dir),
                           "--out", str(tmp_path / "cluster"), "--method", "kmeans", "--k", "3",
                           "--reduce", "pca", "--no-baselines"])
    assert code == 0, printed
    assert json.loads((tmp_path / "cluster" / "summary.json").read_text())["n"] == 8

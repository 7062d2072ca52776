"""The substructure classifier (`model.head: softmax`): its head and loss, temperature
scaling on a case with a known answer, the config rules, a tiny classifier trained end to
end through `train()`, evaluate's metrics on known inputs, export with its parity checks,
and one prediction through the local server. Tiny data (16x16 blobs whose background
level tells the class apart) keep it to seconds."""

from __future__ import annotations

import contextlib
import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import write_dataset
from roundtrip import assert_keras_roundtrip

from deeplense_tf.data.classes import class_names, labels_for_run
from deeplense_tf.data.schema import CLASS_NAMES, CLASS_TARGET
from deeplense_tf.errors import ConfigError, DataError
from deeplense_tf.models import build_model
from deeplense_tf.models.classification import (
    LOGITS_LAYER,
    ClassCrossEntropy,
    TemperatureSoftmax,
    fit_temperature,
    get_temperature,
    set_temperature,
)
from deeplense_tf.training.config import load_config

SHAPE = (16, 16, 1)
TINY_CNN = {"width": 4, "blocks": 2, "convs_per_block": 1}


def class_images(split, images):
    """Blobs whose background level is the class (`class_id = index % 3` in data_fixtures):
    a difference every D4 element keeps, which a tiny CNN learns in a few dozen steps."""
    class_id = np.arange(len(images)) % len(CLASS_NAMES)
    return images + 0.5 * class_id[:, None, None, None].astype(np.float32)


@pytest.fixture(scope="module")
def class_data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("classes") / "blobs",
                         counts={"train": 96, "val": 24, "test": 24}, images_override=class_images)


# --- head and loss -------------------------------------------------------------------------


def test_head_outputs_probabilities_and_round_trips(tmp_path):
    model = build_model("cnn", SHAPE, [CLASS_TARGET], head="softmax", num_classes=3,
                        normalization="none", **TINY_CNN)
    assert model.output_names == [CLASS_TARGET]
    images = np.random.default_rng(0).gamma(1.0, 1.0, (4, *SHAPE)).astype(np.float32)
    probabilities = np.asarray(model(images)[CLASS_TARGET])
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    set_temperature(model, 2.5)
    reloaded = assert_keras_roundtrip(model, images, tmp_path)
    assert get_temperature(reloaded) == pytest.approx(2.5, rel=1e-6)  # it travels with the file


def test_temperature_divides_the_logits():
    layer = TemperatureSoftmax()
    logits = tf.constant([[2.0, 0.0, -1.0]])
    np.testing.assert_allclose(layer(logits).numpy(), tf.nn.softmax(logits).numpy(), rtol=1e-6)
    layer.log_temperature.assign(np.log(4.0))
    np.testing.assert_allclose(layer(logits).numpy(), tf.nn.softmax(logits / 4.0).numpy(), rtol=1e-6)


def test_cross_entropy_is_the_negative_log_probability():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.25, 0.5, 0.25]], np.float32)
    labels = np.array([[0.0], [2.0], [0.0]], np.float32)
    loss = ClassCrossEntropy(reduction=None)(labels, probabilities).numpy()
    np.testing.assert_allclose(loss, -np.log([0.7, 0.8, 0.25]), rtol=1e-6)
    # Its gradient w.r.t. the logits is softmax - one-hot, also for a confident mistake.
    logits = tf.Variable([[30.0, 0.0, -30.0]])
    with tf.GradientTape() as tape:
        value = ClassCrossEntropy()(tf.constant([[2.0]]), tf.nn.softmax(logits))
    grad = tape.gradient(value, logits).numpy()
    np.testing.assert_allclose(grad, tf.nn.softmax(logits).numpy() - [[0, 0, 1]], atol=1e-5)


def test_fit_temperature_recovers_a_known_temperature():
    """Labels drawn from softmax(z / 2): the fit must find T = 2 (and T = 1 from T = 1)."""
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 3.0, (20000, 3))
    for true_t in (2.0, 1.0, 0.5):
        p = np.exp(logits / true_t)
        p /= p.sum(axis=1, keepdims=True)
        labels = np.array([rng.choice(3, p=row) for row in p])
        fit = fit_temperature(logits, labels)
        assert fit["temperature"] == pytest.approx(true_t, rel=0.05)
        assert fit["nll_after"] <= fit["nll_before"]


def test_class_names_and_labels_match_by_name():
    assert class_names({"classes": list(CLASS_NAMES), "drawn_classes": ["axion", "no_sub"]}) == ("no_sub", "axion")
    assert class_names({"classes": list(CLASS_NAMES)}) == CLASS_NAMES
    with pytest.raises(DataError, match="at least two"):
        class_names({"classes": list(CLASS_NAMES), "drawn_classes": ["axion"]})
    np.testing.assert_array_equal(labels_for_run([2, 0, 2], CLASS_NAMES, ("no_sub", "axion")), [1, 0, 1])
    with pytest.raises(DataError, match="cdm"):
        labels_for_run([1], CLASS_NAMES, ("no_sub", "axion"), "x.npz")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data.targets": ["theta_e_arcsec"]}, "data.targets"),
        ({"training.monitor": "val_mae"}, "training.monitor"),
    ],
)
def test_config_refuses_regression_options(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides={"model.head": "softmax", **overrides})
    assert load_config(overrides={"model.head": "softmax"})["model"]["head"] == "softmax"


# --- training end to end -------------------------------------------------------------------


def tiny_classifier_config(data_dir, **overrides):
    base = {
        "data.path": str(data_dir),
        "model.name": "cnn",
        "model.head": "softmax",
        "model.normalization": "none",
        "model.crop": None,
        "model.options": TINY_CNN,
        "training.epochs": 6,
        "training.batch_size": 16,
        "training.learning_rate": 1e-2,
        "training.bn_recalibration_batches": 2,
    }
    base.update(overrides)
    return load_config(overrides=base)


@pytest.fixture(scope="module")
def trained(class_data, tmp_path_factory):
    from deeplense_tf.training import train

    out = tmp_path_factory.mktemp("runs") / "classifier"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        run = train(tiny_classifier_config(class_data), out, progress=False)
    return {"run": run, "out": out, "printed": printed.getvalue()}


def test_train_writes_a_classifier_run(trained):
    out, run = trained["out"], trained["run"]
    info = json.loads((out / "run.json").read_text())
    assert info["head"] == "softmax" and info["targets"] == [CLASS_TARGET]
    assert info["classes"] == list(CLASS_NAMES)
    assert "val accuracy" in trained["printed"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"]["accuracy"] >= 0.9
    fit = metrics["temperature_calibration"]
    assert fit["split"] == "val" and fit["nll_after"] <= fit["nll_before"] + 1e-9
    assert get_temperature(run.model) == pytest.approx(fit["temperature"], rel=1e-5)
    assert (out / "plots" / "history.png").is_file()

    from deeplense_tf.runs import Run

    loaded = Run.load(out)
    assert loaded.class_names == CLASS_NAMES
    assert get_temperature(loaded.model) == pytest.approx(fit["temperature"], rel=1e-5)


def test_run_predict_gives_calibrated_probabilities(trained, class_data):
    from deeplense_tf.data import load_examples
    from deeplense_tf.models.cut import cut_model
    from deeplense_tf.runs import Run

    run = Run.load(trained["out"])
    examples = load_examples(class_data, split="test")
    predicted = run.predict(examples.images)[CLASS_TARGET]
    assert predicted["probabilities"].shape == (len(examples.images), 3)
    assert predicted["class_names"] == CLASS_NAMES
    assert np.mean(predicted["class_id"] == examples.class_id) >= 0.9
    logits = np.asarray(cut_model(run.model, LOGITS_LAYER)(examples.images), np.float64)
    scaled = logits / get_temperature(run.model)
    expected = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    np.testing.assert_allclose(predicted["probabilities"], expected / expected.sum(axis=1, keepdims=True),
                               atol=1e-5)
    tta = run.predict(examples.images, tta=True)[CLASS_TARGET]
    np.testing.assert_allclose(tta["probabilities"].sum(axis=1), 1.0, rtol=1e-6)

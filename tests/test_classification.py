"""The substructure classifier (`model.head: softmax`): its head and loss, temperature
scaling on a case with a known answer, the config rules, a tiny classifier trained end to
end through `train()`, evaluate's metrics on known inputs, export with its parity checks,
and one prediction through the local server. Tiny data (16x16 blobs whose background
level tells the class apart) keep it to seconds."""

from __future__ import annotations

import contextlib
import io
import json

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
        labels = (rng.uniform(size=(len(p), 1)) > np.cumsum(p, axis=1)).sum(axis=1)  # one draw per row
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


def test_train_per_class_is_a_classifier_key():
    with pytest.raises(ConfigError, match="data.train_per_class counts examples per substructure class"):
        load_config(overrides={"data.train_per_class": 10})
    assert load_config(overrides={"model.head": "softmax", "data.train_per_class": 10})["data"]["train_per_class"] == 10


def test_labelled_subsets_keep_the_first_examples_of_each_class(class_data):
    """The few-shot subsets: `per_class` keeps the first k of each class in reading order,
    `limit` the first n; `train_example_count` says how many the pipeline yields."""
    from deeplense_tf.data import build_dataset, read_manifest
    from deeplense_tf.training.datasets import train_example_count

    def labels(**limits):
        ds = build_dataset(class_data, "train", targets=[], classes=CLASS_NAMES, batch_size=7, **limits)
        return np.concatenate([y[CLASS_TARGET].numpy().ravel() for _, y in ds]).astype(int)

    every = labels()
    assert np.bincount(every).tolist() == [32, 32, 32]
    few = labels(per_class=5)
    assert np.bincount(few).tolist() == [5, 5, 5]
    # The same examples as the full pass's first five of each class, in the same order.
    first = np.sort(np.concatenate([np.flatnonzero(every == c)[:5] for c in range(3)]))
    np.testing.assert_array_equal(few, every[first])
    np.testing.assert_array_equal(labels(limit=10), every[:10])
    assert len(labels(per_class=50, limit=40)) == 40  # 32 of each exist; then the first 40

    manifest = read_manifest(class_data)
    for limits, expected in (({}, 96), ({"data.train_per_class": 5}, 15),
                             ({"data.train_per_class": 50}, 96), ({"data.train_limit": 20}, 20)):
        config = tiny_classifier_config(class_data, **limits)
        assert train_example_count(config, manifest, [CLASS_TARGET]) == expected, limits


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


# --- evaluate --------------------------------------------------------------------------------


def test_metrics_on_known_inputs():
    names = ("no_sub", "cdm", "axion")
    labels = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array([
        [0.9, 0.05, 0.05],   # right, confidence 0.9
        [0.3, 0.6, 0.1],     # wrong (cdm), confidence 0.6
        [0.2, 0.7, 0.1],     # right, 0.7
        [0.1, 0.8, 0.1],     # right, 0.8
        [0.05, 0.05, 0.9],   # right, 0.9
        [0.5, 0.1, 0.4],     # wrong (no_sub), 0.5
    ])
    from deeplense_tf.evaluation.classification import classification_metrics

    m = classification_metrics(labels, probabilities, names, bins=10)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # per class (precision, recall): no_sub (1/2, 1/2), cdm (2/3, 1), axion (1, 1/2)
    f1 = [0.5, 2 * (2 / 3) / (2 / 3 + 1), 2 * 0.5 / 1.5]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    # no_sub's scores: positives 0.9, 0.3 against 0.2, 0.1, 0.05, 0.5: 0.9 wins all four
    # pairs, 0.3 three (it loses to 0.5): 7 of 8.
    assert m["per_class"]["no_sub"]["auroc"] == pytest.approx(7 / 8)
    # cdm: 0.7, 0.8 above 0.05, 0.6, 0.05, 0.1; axion: 0.9, 0.4 above 0.05, 0.1, 0.1, 0.1.
    assert m["per_class"]["cdm"]["auroc"] == pytest.approx(1.0)
    assert m["per_class"]["axion"]["auroc"] == pytest.approx(1.0)
    assert m["auroc_ovr_macro"] == pytest.approx((7 / 8 + 2) / 3)
    # A tie counts half: equal scores for a positive and a negative give 0.5.
    from deeplense_tf.evaluation.classification import one_vs_rest_auroc

    assert one_vs_rest_auroc([0.3, 0.3], [True, False]) == pytest.approx(0.5)
    # ECE over 10 bins: 0.5 -> wrong (|0 - 0.5|), 0.6 -> wrong (0.6), 0.7 right (0.3),
    # 0.8 right (0.2), two at 0.9 both right (0.1 each).
    assert m["ece"] == pytest.approx((0.5 + 0.6 + 0.3 + 0.2 + 0.1 + 0.1) / 6)
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.3, 0.7, 0.8, 0.9, 0.4])))
    counts = [b["count"] for b in m["reliability"]["bins"]]
    assert counts == [0, 0, 0, 0, 0, 1, 1, 1, 1, 2]


def test_auroc_of_an_absent_class_is_none():
    from deeplense_tf.evaluation.classification import classification_metrics

    m = classification_metrics([0, 1, 0], [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]],
                               ("a", "b", "c"))
    assert m["per_class"]["c"]["auroc"] is None and m["auroc_ovr_macro"] == pytest.approx(1.0)
    assert m["macro_f1"] == pytest.approx(1.0)  # the absent class is left out of the mean


def test_evaluate_command_reports_a_classifier(trained, tmp_path, capsys):
    from deeplense_tf.cli import main

    assert main(["evaluate", "--run", str(trained["out"]), "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "macro-F1" in printed and "confusion matrix" in printed
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    result = metrics["classification"]
    assert metrics["classes"] == list(CLASS_NAMES) and result["count"] == 24
    assert result["accuracy"] >= 0.9 and result["auroc_ovr_macro"] >= 0.9
    assert sum(map(sum, result["confusion_matrix"])) == 24
    assert 0.0 <= result["ece"] <= 1.0
    for name in ("plots/reliability.png", "plots/confusion.png", "predictions.csv"):
        assert (tmp_path / "eval" / name).is_file()
    header = (tmp_path / "eval" / "predictions.csv").read_text().splitlines()[0]
    assert header == "true,predicted,p_no_sub,p_cdm,p_axion"


# --- export and serving -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    from deeplense_tf.export import exporter

    out = tmp_path_factory.mktemp("serving")
    paths = exporter.export_run(trained["out"], out, tflite="fp32,int8", progress=False)
    return {"out": out, "paths": paths, "report": json.loads(paths["report"].read_text())}


def test_export_outputs_probabilities_with_class_names(exported, trained, class_data):
    from deeplense_tf.data import load_examples
    from deeplense_tf.export.tflite import run_tflite

    report = exported["report"]
    assert report["head"] == "softmax" and report["class_names"] == list(CLASS_NAMES)
    outputs = report["signatures"]["serving_default"]["outputs"]
    assert list(outputs) == ["class_probabilities"]
    # The parity checks ran on the probabilities: SavedModel and fp32 within tolerance.
    saved = report["checks"]["saved_model"]
    assert max(saved["max_scaled_diff"].values()) <= 1e-5
    assert report["checks"]["tflite"]["fp32"]["max_scaled_diff"]["class_probabilities"] <= 1e-4
    images = load_examples(class_data, split="test").images
    expected = trained["run"].predict(images)[CLASS_TARGET]["probabilities"]
    loaded = tf.saved_model.load(str(exported["paths"]["saved_model"]))
    served = loaded.signatures["serving_default"](image=tf.constant(images))["class_probabilities"]
    np.testing.assert_allclose(served.numpy(), expected, atol=1e-5)  # the temperature is inside
    lite = run_tflite(exported["paths"]["tflite_fp32"], images)["class_probabilities"]
    np.testing.assert_allclose(lite, expected, atol=1e-4)


def test_export_refuses_on_device_for_a_classifier(trained, tmp_path):
    from deeplense_tf.errors import ExportError
    from deeplense_tf.export import exporter

    with pytest.raises(ExportError, match="classifier"):
        exporter.export_run(trained["out"], tmp_path, on_device=True, progress=False)
    assert not any(tmp_path.iterdir())


def test_served_classifier_predicts_probabilities(exported, trained, class_data):
    from deeplense_tf.data import load_examples
    from deeplense_tf.serving.config import ModelConfig
    from deeplense_tf.serving.model_store import ModelStore
    from deeplense_tf.serving.rest_client import RestClient
    from deeplense_tf.serving.server import ModelServer

    images = load_examples(class_data, split="test", limit=5).images
    expected = trained["run"].predict(images)[CLASS_TARGET]["probabilities"]
    store = ModelStore([ModelConfig("deeplense", exported["out"] / "deeplense")])
    with ModelServer(store, rest_port=0, grpc_port=None) as server:
        out = RestClient(server.rest_url, "deeplense").predict(images)
    assert out["class_probabilities"].shape == (5, 3)
    np.testing.assert_allclose(out["class_probabilities"], expected, atol=1e-5)


def test_predict_command_writes_class_and_probabilities(trained, class_data, capsys):
    from deeplense_tf.cli import main

    assert main(["predict", "--run", str(trained["out"]), "--data", str(class_data), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 24
    assert set(rows[0]) == {"source", "index", "class", "p_no_sub", "p_cdm", "p_axion"}
    for row in rows:
        assert sum(row[f"p_{c}"] for c in CLASS_NAMES) == pytest.approx(1.0, abs=1e-5)
        assert row["class"] == max(CLASS_NAMES, key=lambda c: row[f"p_{c}"])
    truth = np.arange(24) % 3  # the fixture's class_id, in test-split order
    assert np.mean([CLASS_NAMES.index(r["class"]) == t for r, t in zip(rows, truth)]) >= 0.9


def test_calibrate_refits_the_temperature(trained, tmp_path):
    import shutil

    from deeplense_tf.runs import Run
    from deeplense_tf.training.calibrate import calibrate_run

    copy = tmp_path / "run"
    shutil.copytree(trained["out"], copy)
    fit = calibrate_run(copy, verbose=False)
    recorded = json.loads((copy / "metrics.json").read_text())["temperature_calibration"]
    assert recorded["split"] == "val" and recorded["temperature"] == pytest.approx(fit["temperature"])
    # The same val split as at the end of training: the same temperature comes out.
    trained_fit = json.loads((trained["out"] / "metrics.json").read_text())["temperature_calibration"]
    assert fit["temperature"] == pytest.approx(trained_fit["temperature"], rel=1e-3)
    assert get_temperature(Run.load(copy).model) == pytest.approx(fit["temperature"], rel=1e-5)


def test_a_regressor_encoder_initialises_a_classifier():
    from deeplense_tf.models import encoder_layers
    from deeplense_tf.runs.run import Run
    from deeplense_tf.training.finetune import load_init_weights

    regressor = build_model("cnn", SHAPE, ["theta_e_arcsec"], head="gaussian", normalization="none",
                            **TINY_CNN)
    source = Run(path=None, model=regressor, config={}, targets=["theta_e_arcsec"], head="gaussian",
                 input_shape=SHAPE, target_stats={}, info={"model": "cnn"})
    classifier = build_model("cnn", SHAPE, [CLASS_TARGET], head="softmax", num_classes=3,
                             normalization="none", **TINY_CNN)
    config = {"model": {"name": "cnn", "head": "softmax"}}
    copied = load_init_weights(classifier, source, config, SHAPE)
    with_weights = [layer for layer in encoder_layers(classifier) if layer.weights]
    assert copied == len(with_weights) > 0
    by_name = {layer.name: layer for layer in regressor.layers}
    for layer in with_weights:
        for a, b in zip(layer.get_weights(), by_name[layer.name].get_weights()):
            np.testing.assert_array_equal(a, b)


def test_an_ensemble_of_classifiers_is_refused(trained, tmp_path):
    import shutil

    from deeplense_tf.errors import RunError
    from deeplense_tf.training.ensemble import ensemble_runs

    for name in ("a", "b"):
        shutil.copytree(trained["out"], tmp_path / name)
    with pytest.raises(RunError, match="classifier"):
        ensemble_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "ensemble")


def test_infer_population_refuses_a_classifier_in_one_line(trained, class_data, tmp_path, capsys):
    from deeplense_tf.cli import main

    code = main(["infer-population", "--run", str(trained["out"]), "--data", str(class_data),
                 "--out", str(tmp_path / "population")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "a softmax head gives no per-lens posterior" in err
    assert not (tmp_path / "population").exists()


def test_a_few_shot_classifier_trains_on_its_subset(class_data, tmp_path):
    from deeplense_tf.training import train

    config = tiny_classifier_config(class_data, **{"data.train_per_class": 8, "training.epochs": 1})
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        train(config, tmp_path / "few", progress=False)
    assert "on 24 examples (1 steps of 16 per epoch" in printed.getvalue()
    assert json.loads((tmp_path / "few" / "metrics.json").read_text())["train_examples"] == 24
    with pytest.raises(DataError, match="under data.train_per_class=2, fewer than training.batch_size 16"):
        train(tiny_classifier_config(class_data, **{"data.train_per_class": 2}), tmp_path / "tiny", progress=False)

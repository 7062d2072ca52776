"""Tuning: search-space files and their errors, the HyperModel (defaults, hp.Fixed
overrides), objectives and trial metrics, a two-trial search end to end (each trial a
`deeplense train` run whose folder `deeplense evaluate` takes; results table, plot, best
config that `load_config` accepts and that retrains to the trial's numbers), resume
without repeating trials, Hyperband continuing a trial from its run, and the tuner factory.

Tiny data (16x16 blobs from data_fixtures) and `tuning/tiny.yaml` (a one-block CNN, one
two-step epoch per trial) keep a trial to seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import keras_tuner
import numpy as np
import pandas as pd
import pytest
import yaml
from data_fixtures import write_dataset

from deeplense_tf.errors import ConfigError
from deeplense_tf.models import MODEL_NAMES
from deeplense_tf.training import tuning
from deeplense_tf.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "tuning"
TINY = SPACES / "tiny.yaml"
TARGET = "theta_e_arcsec"
OVERRIDES = {"data.targets": [TARGET]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tune-data"), counts={"train": 40, "val": 12, "test": 12})


def quiet(fn, *args, **kwargs):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = fn(*args, **kwargs)
    return result, buffer.getvalue()


# --- search-space files ------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(MODEL_NAMES))
def test_space_file_equals_builtin_default(family):
    """tuning/<family>.yaml is what `deeplense tune --model <family>` searches without --space."""
    from_file = tuning.load_search_space(SPACES / f"{family}.yaml")
    assert from_file.model == family
    assert from_file.to_dict() == tuning.default_search_space(family).to_dict()
    # The default space searches depth/width (or the variant), dropout, rates, head, augmentation.
    names = set(from_file.hyperparameters)
    assert {"dropout", "learning_rate", "weight_decay", "head", "augment", "batch_size", "epochs"} <= names
    assert names & {"depth", "width", "variant"}


def test_space_parsing_kinds():
    space = tuning.parse_search_space(
        {
            "model": "cnn",
            "hyperparameters": {
                "depth": {"min": 1, "max": 3},
                "learning_rate": {"min": "1e-4", "max": "1e-2", "sampling": "log"},
                "width": {"values": [8, 16], "default": 16},
                "head": "point",
                "dropout": {"min": 0.2, "max": 0.2},
            },
        }
    )
    h = space.hyperparameters
    assert (h["depth"].kind, h["depth"].key) == ("int", "model.options.blocks")
    assert (h["learning_rate"].kind, h["learning_rate"].min) == ("float", 1e-4)  # YAML 1.1 strings
    assert (h["width"].kind, h["width"].default) == ("choice", 16)
    assert (h["head"].kind, h["head"].values, h["head"].key) == ("fixed", ("point",), "model.head")
    assert h["dropout"].kind == "fixed"  # min == max is one value
    assert tuning.parse_search_space(space.to_dict()).to_dict() == space.to_dict()


@pytest.mark.parametrize(
    "hyperparameters, message",
    [
        ({"widht": {"values": [8]}}, "unknown hyperparameter 'widht' for model cnn (did you mean width?)"),
        ({"width": {"values": []}}, "hyperparameter width: empty range"),
        ({"learning_rate": {"min": 0.1, "max": 0.01}}, "hyperparameter learning_rate: empty range (min 0.1 > max 0.01)"),
        ({"learning_rate": {"min": 0.0, "max": 0.1, "sampling": "log"}}, "learning_rate: log sampling needs min > 0"),
        ({"width": {"values": [8, "wide"]}}, "width: values must all be of one type"),
        ({"width": {"min": 8}}, "width: a range needs both min and max"),
        ({"width": {"vals": [8]}}, "width: unknown field 'vals'"),
        ({"depth": {"values": [2]}, "blocks": {"values": [3]}}, "depth and blocks both set model.options.blocks"),
    ],
)
def test_space_errors_name_the_key(hyperparameters, message):
    with pytest.raises(ConfigError) as err:
        tuning.parse_search_space({"model": "cnn", "hyperparameters": hyperparameters}, source="s.yaml")
    assert str(err.value).startswith("s.yaml: ")
    assert message in str(err.value)


def test_space_values_checked_against_the_config():
    base = load_config(overrides={"model.name": "cnn"})
    with pytest.raises(ConfigError, match=r"hyperparameter head value 'cauchy' is not valid for model.head"):
        tuning.parse_search_space(
            {"model": "cnn", "hyperparameters": {"head": {"values": ["gaussian", "cauchy"]}}},
            base_config=base,
        )
    with pytest.raises(ConfigError, match="hyperparameter batch_size value 0"):
        tuning.parse_search_space(
            {"model": "cnn", "hyperparameters": {"batch_size": {"min": 0, "max": 8}}}, base_config=base
        )


def test_space_file_and_model_errors(tmp_path, data_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: cnn\nhyperparameters:\n  learning_rate: {min: 1.0e-2, max: 1.0e-3}\n")
    with pytest.raises(ConfigError, match=f"{bad}: hyperparameter learning_rate: empty range"):
        tuning.resolve_search(data_dir, space=bad, overrides=OVERRIDES)
    with pytest.raises(ConfigError, match="is a space for model 'cnn', but --model is 'vit'"):
        tuning.resolve_search(data_dir, space=TINY, model="vit", overrides=OVERRIDES)
    wrong_config = tmp_path / "wrong_config.yaml"
    wrong_config.write_text("model: cnn\nconfig: {training: {epoks: 3}}\n")
    with pytest.raises(ConfigError, match=r"wrong_config.yaml \(config section\).*training.epoks"):
        tuning.resolve_search(data_dir, space=wrong_config, overrides=OVERRIDES)
    with pytest.raises(ConfigError, match="unknown model 'mlp'"):
        tuning.default_search_space("mlp")
    classifier = load_config(overrides={"data.path": str(data_dir), "model.name": "cnn", "model.head": "softmax"})
    with pytest.raises(ConfigError, match="a search is over regressors or over classifiers, not both"):
        tuning.DeepLenseHyperModel(classifier)  # the default space's head choice: regression heads


def test_cli_reports_a_bad_space_in_one_line(tmp_path, data_dir, capsys):
    from deeplense_tf.cli import main

    bad = tmp_path / "unknown.yaml"
    bad.write_text("model: cnn\nhyperparameters:\n  depht: {values: [2, 3]}\n")
    code = main(["tune", "--data", str(data_dir), "--out", str(tmp_path / "out"), "--space", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1
    assert "unknown hyperparameter 'depht'" in err and str(bad) in err


# --- objectives and metrics --------------------------------------------------------------------


def test_default_and_chosen_objectives():
    targets = ["a", "b"]
    assert tuning.resolve_objective(None, targets, ["gaussian"]) == "val_a_nll"
    assert tuning.resolve_objective("auto", targets, ["gaussian", "point"]) == "val_a_mae"
    assert tuning.resolve_objective(None, targets, ["point"]) == "val_a_mae"
    assert tuning.resolve_objective("val_b_mae_physical", targets, ["point"]) == "val_b_mae_physical"
    assert tuning.resolve_objective(None, targets, ["gaussian", "student_t"]) == "val_a_nll"
    with pytest.raises(ConfigError, match="NLL needs the Gaussian or Student-t head"):
        tuning.resolve_objective("val_a_nll", targets, ["gaussian", "point"])
    with pytest.raises(ConfigError, match=r"unknown objective 'val_c_mae'.*choose from val_loss"):
        tuning.resolve_objective("val_c_mae", targets, ["gaussian"])


def _fake_run(folder, targets, head, validation, stds):
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"validation": validation, "epochs": 4, "best_epoch": 3}))
    (folder / "target_stats.json").write_text(json.dumps({t: {"mean": 0.0, "std": s} for t, s in zip(targets, stds)}))
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"targets": targets}, "model": {"head": head}}))
    return folder


def test_trial_metrics_read_the_final_validation_of_the_run(tmp_path):
    """A trial scores the model its run saved (metrics.json), under names per target."""
    single = _fake_run(tmp_path / "one", ["a"], "gaussian",
                       {"loss": 1.2, "targets": {"a": {"mae": 0.6, "mae_standardised": 0.3}}}, [2.0])
    metrics = tuning.trial_metrics(single)
    assert metrics["val_a_mae"] == 0.3 and metrics["val_a_mae_physical"] == 0.6
    assert metrics["val_a_nll"] == pytest.approx(1.2 + math.log(2.0))  # standardised -> physical
    assert (metrics["val_loss"], metrics["epochs"], metrics["best_epoch"]) == (1.2, 4.0, 3.0)
    several = _fake_run(tmp_path / "two", ["a", "b"], "point", {"loss": 3.0, "targets": {
        "a": {"mae": 0.4, "mae_standardised": 0.2, "loss": 1.0},
        "b": {"mae": 0.2, "mae_standardised": 0.4, "loss": 2.0}}}, [2.0, 0.5])
    metrics = tuning.trial_metrics(several)
    assert metrics["val_mae"] == pytest.approx(0.3)
    assert metrics["val_b_loss"] == 2.0 and metrics["val_b_mae_physical"] == 0.2
    assert "val_a_nll" not in metrics  # no NLL for point predictions


# --- hypermodels -------------------------------------------------------------------------------


def test_hypermodel_defaults_and_fixed_overrides(data_dir):
    base, _ = tuning.resolve_search(data_dir, model="cnn", overrides={
        **OVERRIDES, "model.normalization": "none", "model.crop": None})
    hypermodel = tuning.build_hypermodel(base)
    assert isinstance(hypermodel, tuning.DeepLenseHyperModel)
    assert hypermodel.objective == f"val_{TARGET}_mae"  # head is searched: MAE

    # No search: every hyperparameter takes its default.
    hp = keras_tuner.HyperParameters()
    defaults = hypermodel.declare(hp)
    assert defaults["depth"] == 3 and defaults["width"] == 32 and defaults["head"] == "gaussian"
    config = hypermodel.trial_config(defaults)
    assert config["model"]["options"]["blocks"] == 3  # cnn's registry alias depth -> blocks
    assert config["training"]["learning_rate"] == pytest.approx(1e-3)
    assert config["training"]["epochs"] == 30 and config["training"]["batch_size"] == 64

    # hp.Fixed set beforehand wins over the space.
    fixed = keras_tuner.HyperParameters()
    fixed.Fixed("depth", 2)
    fixed.Fixed("width", 4)
    fixed.Fixed("head", "point")
    model = hypermodel.build(fixed)
    convs = [layer for layer in model.layers if layer.name.endswith("_conv0")]
    assert [layer.filters for layer in convs] == [4, 8]  # two blocks, width 4 then 8
    assert tuple(model.get_layer(TARGET).output.shape) == (None, 1)  # point head

    # A Hyperband continuation: the earlier trial's run, the epochs left, a fresh schedule.
    continued = hypermodel.trial_config({**defaults, "tuner/epochs": 9, "tuner/initial_epoch": 3},
                                        init_from=data_dir)
    assert continued["training"]["epochs"] == 6
    assert continued["training"]["init_from"] == str(Path(data_dir).resolve())
    assert continued["training"]["finetune_lr_factor"] == 1.0
    # Trials train through the package's loop, never Keras's fit.
    with pytest.raises(ConfigError, match="train through deeplense train's loop"):
        hypermodel.fit(fixed, model)


@pytest.mark.parametrize("family", sorted(MODEL_NAMES))
def test_every_family_default_trial_is_a_valid_config(family, data_dir):
    base, space = tuning.resolve_search(data_dir, model=family, overrides=OVERRIDES)
    hypermodel = tuning.build_hypermodel(base, space)
    config = hypermodel.trial_config(hypermodel.declare(keras_tuner.HyperParameters()))
    assert config["model"]["name"] == family
    assert load_config(overrides=config) == config


def test_tuner_factory(tmp_path, data_dir):
    base, space = tuning.resolve_search(data_dir, space=TINY, overrides=OVERRIDES)
    hypermodel = tuning.build_hypermodel(base, space)
    oracles = {}
    for kind in tuning.TUNERS:
        tuner = tuning.make_tuner(kind, hypermodel, tmp_path / kind, max_trials=3, max_epochs=2)
        assert isinstance(tuner, tuning.DeepLenseTuner)
        oracles[kind] = type(tuner.oracle).__name__
        assert tuner.oracle.objective.name == f"val_{TARGET}_nll"
        assert tuner.oracle.max_trials == 3
    assert oracles == {"random": "RandomSearchOracle", "hyperband": "HyperbandOracle",
                       "bayesian": "BayesianOptimizationOracle"}
    with pytest.raises(ConfigError, match="unknown tuner 'grid'"):
        tuning.make_tuner("grid", hypermodel, tmp_path, max_trials=1)


# --- searches ----------------------------------------------------------------------------------


def test_two_trial_search_then_resume(tmp_path, data_dir):
    from deeplense_tf.cli import main

    out = tmp_path / "search"
    args = ["tune", "--data", str(data_dir), "--out", str(out), "--space", str(TINY),
            "--set", f"data.targets=[{TARGET}]", "--seed", "3"]
    code, printed = quiet(main, args + ["--max-trials", "2"])
    assert code == 0, printed
    assert f"wrote {out / 'best_config.yaml'}" in printed

    table = pd.read_csv(out / "results.csv")
    assert list(table["trial_id"]) == [0, 1]
    assert set(table["status"]) == {"COMPLETED"}
    assert {"score", "seconds", "width", "learning_rate", "head", f"val_{TARGET}_mae"} <= set(table.columns)
    assert (table["seconds"] > 0).all()
    assert np.isfinite(table["score"]).all()
    assert ((table["learning_rate"] >= 1e-3) & (table["learning_rate"] <= 1e-2)).all()
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The best trial as an experiment config that `deeplense train --config` takes unchanged.
    best = table.loc[table["score"].idxmin()]
    config = load_config(out / "best_config.yaml")
    assert config["model"]["options"]["width"] == best["width"]
    assert config["training"]["learning_rate"] == pytest.approx(best["learning_rate"])
    assert config["model"]["name"] == "cnn" and config["seed"] == 3
    assert config["data"]["path"] == str(Path(data_dir).resolve())
    assert config["data"]["targets"] == [TARGET]
    assert config["training"]["steps_per_epoch"] == 2  # from the space's config section
    # ... and training it repeats the trial: same seed, data, schedule, so the same val MAE.
    from deeplense_tf.training import train

    run, _ = quiet(train, config, tmp_path / "best_run", progress=False)
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["validation"]["targets"][TARGET]["mae"] == pytest.approx(
        best[f"val_{TARGET}_mae_physical"], rel=1e-3)

    # Each trial is a `deeplense train` run: its folder is a run folder with the trial's
    # config, its score what that run saved, and `deeplense evaluate` takes it.
    trial_dir = out / "search" / f"trial_{best['trial_id']}"
    assert f"best trial {best['trial_id']}, a run folder: {trial_dir}" in printed
    assert load_config(trial_dir / "config.yaml") == config
    trial_metrics = json.loads((trial_dir / "metrics.json").read_text())
    assert trial_metrics["validation"]["targets"][TARGET]["mae"] == pytest.approx(
        best[f"val_{TARGET}_mae_physical"], rel=1e-9)
    assert "variance_calibration" in trial_metrics  # the loop's end-of-run steps ran
    assert "epoch 1/1" in (trial_dir / "train.log").read_text()
    code, printed = quiet(main, ["evaluate", "--run", str(trial_dir), "--data", str(data_dir)])
    assert code == 0, printed
    assert (trial_dir / "eval" / "metrics.json").is_file()

    # Resume asking for three: one new trial, the first two untouched.
    before = {p: p.stat().st_mtime_ns for p in (out / "search").glob("trial_*/trial.json")}
    result, printed = quiet(tuning.tune, data_dir, out, space=TINY, max_trials=3, overrides=OVERRIDES,
                            seed=3, progress=False)
    assert result.new_trials == 1
    assert "resuming" in printed and "2 trials finished, 1 to run" in printed
    assert list(result.table["trial_id"]) == ["0", "1", "2"]
    for path, mtime in before.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
    pd.testing.assert_series_equal(result.table["score"][:2].astype(float), table["score"].astype(float),
                                   check_names=False)
    assert len(pd.read_csv(out / "results.csv")) == 3

    # Nothing left: no trial runs.
    result, _ = quiet(tuning.tune, data_dir, out, space=TINY, max_trials=3, overrides=OVERRIDES,
                      seed=3, progress=False)
    assert result.new_trials == 0

    # Resuming with other settings is refused (they would mix two searches).
    with pytest.raises(ConfigError, match="holds a search with a different tuner"):
        tuning.tune(data_dir, out, space=TINY, tuner="bayesian", max_trials=4, overrides=OVERRIDES, seed=3)


def test_hyperband_sets_the_epochs_and_continues_trials_from_their_runs(tmp_path, data_dir):
    """Hyperband's `tuner/epochs` becomes the trial's training.epochs (and the best config's);
    a trial it promotes trains on from the earlier trial's run folder (`training.init_from`)."""
    out = tmp_path / "hb"
    # max_epochs 3, factor 3: three one-epoch trials, then the best continues to epoch 3.
    result, _ = quiet(tuning.tune, data_dir, out, space=TINY, tuner="hyperband",
                      max_trials=4, epochs=3, overrides=OVERRIDES, progress=False)
    assert result.new_trials == 4
    table = result.table.set_index("trial_id")
    assert list(table["tuner/epochs"]) == [1, 1, 1, 3]
    continued = table.iloc[3]
    earlier = out / "search" / f"trial_{continued['tuner/trial_id']}"
    config = load_config(out / "search" / f"trial_{table.index[3]}" / "config.yaml")
    assert config["training"]["init_from"] == str(earlier.resolve())
    assert config["training"]["epochs"] == 2  # the epochs left after the earlier trial's one
    assert continued["epochs"] == 2  # epochs run
    # The best config trains from scratch for the whole budget.
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["training"]["init_from"] is None
    assert best["training"]["epochs"] in (1, 3)
    assert "epochs" not in best["model"]["options"]


def test_an_interrupted_trial_resumes_from_its_runs_backup(tmp_path, data_dir, monkeypatch):
    """Killed mid-trial, the search re-runs that trial, and its training resumes."""
    from deeplense_tf.training import session

    real_train = session.train

    def train_then_stop(config, out_dir, **kwargs):
        return real_train(config, out_dir, _interrupt_after=1, **kwargs)

    out = tmp_path / "s"
    monkeypatch.setattr(session, "train", train_then_stop)
    with pytest.raises(KeyboardInterrupt):
        quiet(tuning.tune, data_dir, out, space=TINY, max_trials=1, epochs=2, overrides=OVERRIDES,
              progress=False)
    monkeypatch.setattr(session, "train", real_train)
    result, _ = quiet(tuning.tune, data_dir, out, space=TINY, max_trials=1, epochs=2, overrides=OVERRIDES,
                      progress=False)
    assert result.new_trials == 1 and list(result.table["status"]) == ["COMPLETED"]
    log = (out / "search" / f"trial_{result.best_trial_id}" / "train.log").read_text()
    assert "resuming" in log and "after epoch 1" in log
    assert result.table.iloc[0]["epochs"] == 2


@pytest.mark.parametrize("head", ["gaussian", "student_t"])
def test_trial_metrics_give_the_nll_of_every_likelihood_head(tmp_path, head):
    """The Student-t head's loss is an NLL too: the tuner reports it in target units."""
    run = _fake_run(tmp_path / head, ["a"], head,
                    {"loss": 0.7, "targets": {"a": {"mae": 0.6, "mae_standardised": 0.3}}}, [0.5])
    assert tuning.trial_metrics(run)["val_a_nll"] == pytest.approx(0.7 + math.log(0.5))


def test_a_student_t_search_scores_its_nll(tmp_path, data_dir):
    """A one-trial search with the Student-t head minimises val_<t>_nll, read from its run."""
    space = tmp_path / "tiny-t.yaml"
    space.write_text(TINY.read_text().replace("head: gaussian", "head: student_t"))
    result, _ = quiet(tuning.tune, data_dir, tmp_path / "t", space=space, max_trials=1,
                      overrides=OVERRIDES, progress=False)
    assert result.objective == f"val_{TARGET}_nll"
    row = result.table.iloc[0]
    folder = tmp_path / "t" / "search" / f"trial_{row['trial_id']}"
    assert yaml.safe_load((folder / "config.yaml").read_text())["model"]["head"] == "student_t"
    trial = json.loads((folder / "metrics.json").read_text())
    stats = json.loads((folder / "target_stats.json").read_text())
    assert np.isfinite(row["score"])
    assert row["score"] == pytest.approx(trial["validation"]["loss"] + math.log(stats[TARGET]["std"]))
    assert f"val_{TARGET}_nll" not in row  # the objective is the score column


def test_a_classifier_search_scores_its_cross_entropy(tmp_path, data_dir):
    """A softmax base config searches classifiers: objective val_loss (the validation
    cross-entropy), with the error rate beside it; the default space drops its head choice."""
    space = tmp_path / "tiny-softmax.yaml"
    space.write_text(TINY.read_text().replace("head: gaussian", "head: softmax"))
    result, _ = quiet(tuning.tune, data_dir, tmp_path / "c", space=space, max_trials=1,
                      overrides={"model.head": "softmax"}, progress=False)
    assert result.objective == "val_loss"
    row = result.table.iloc[0]
    folder = tmp_path / "c" / "search" / f"trial_{row['trial_id']}"
    trial = json.loads((folder / "metrics.json").read_text())
    assert row["score"] == pytest.approx(trial["validation"]["loss"])
    assert row["val_error"] == pytest.approx(1 - trial["validation"]["accuracy"])
    base, parsed = tuning.resolve_search(data_dir, model="cnn", overrides={"model.head": "softmax"})
    assert "head" not in parsed.hyperparameters and base["model"]["head"] == "softmax"
    assert tuning.resolve_objective("val_error", ["class"], ["softmax"]) == "val_error"
    with pytest.raises(ConfigError, match="choose from val_loss, val_error"):
        tuning.resolve_objective("val_class_mae", ["class"], ["softmax"])


def test_several_targets_score_the_first_targets_nll(tmp_path, data_dir):
    """With two targets the default objective is the first one's NLL, from its own loss."""
    targets = [TARGET, "source_x_arcsec"]
    result, _ = quiet(tuning.tune, data_dir, tmp_path / "two", space=TINY, max_trials=1,
                      overrides={"data.targets": targets}, progress=False)
    assert result.objective == f"val_{TARGET}_nll"
    row = result.table.iloc[0]
    trial = json.loads((tmp_path / "two" / "search" / f"trial_{row['trial_id']}" / "metrics.json").read_text())
    stats = json.loads((tmp_path / "two" / "search" / f"trial_{row['trial_id']}" / "target_stats.json").read_text())
    losses = [trial["validation"]["targets"][t]["loss"] for t in targets]
    assert sum(losses) == pytest.approx(trial["validation"]["loss"], rel=1e-5)  # each its own share
    for t, loss in zip(targets, losses):
        assert row[f"val_{t}_loss"] == pytest.approx(loss)
    assert row["score"] == pytest.approx(trial["validation"]["targets"][TARGET]["loss"]
                                         + math.log(stats[TARGET]["std"]))


def test_failing_trials_end_the_search_with_the_cause(tmp_path, data_dir, monkeypatch):
    from deeplense_tf.errors import DataError

    def broken_train(self, values, out_dir, init_from=None):
        raise DataError("shard train-00000 is truncated")

    monkeypatch.setattr(tuning.DeepLenseHyperModel, "train_trial", broken_train)
    with pytest.raises(ConfigError, match="three trials in a row failed, the last with: .*shard train-00000 is truncated"):
        quiet(tuning.tune, data_dir, tmp_path / "s", space=TINY, max_trials=5, overrides=OVERRIDES, progress=False)


def test_bad_default_option_fails_before_any_trial(tmp_path, data_dir):
    space = tmp_path / "zero.yaml"
    space.write_text("model: cnn\nhyperparameters:\n  width: {values: [0, 4]}\n")
    with pytest.raises(ConfigError, match="option width=0 must be a positive integer"):
        tuning.tune(data_dir, tmp_path / "s", space=space, max_trials=1,
                    overrides={**OVERRIDES, "model.crop": None})

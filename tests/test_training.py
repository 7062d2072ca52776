"""Training: config validation, the schedule, end-to-end runs (both heads), the run folder,
Run.load / predict / TTA, resume after an interruption, atomic backups, NaN detection and
fine-tuning. Tiny data (16x16 blobs from data_fixtures) and a tiny CNN keep it to seconds.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from data_fixtures import write_dataset

from deeplense_tf.errors import ConfigError, DataError, RunError
from deeplense_tf.training.config import (
    DEFAULT_CONFIG,
    apply_smoke,
    load_config,
    read_yaml,
    save_config,
)

TARGETS = ["theta_e_arcsec", "source_x_arcsec", "source_y_arcsec"]
CONFIGS = Path(__file__).resolve().parents[1] / "deeplense_tf" / "configs"


def tiny_config(data_dir, **overrides):
    """A 3-epoch run of a tiny CNN on raw pixels (the blob's amplitude and position are
    the targets, so normalising by the peak would hide one of them)."""
    base = {
        "data.path": str(data_dir),
        "data.targets": TARGETS,
        "model.name": "cnn",
        "model.normalization": "none",
        "model.crop": None,
        "model.options": {"width": 4, "blocks": 2, "convs_per_block": 1},
        "training.epochs": 3,
        "training.batch_size": 8,
        "training.learning_rate": 3e-3,
        "training.bn_recalibration_batches": 2,
    }
    base.update(overrides)
    return load_config(overrides=base)


def read_history(run_dir) -> list[dict]:
    with open(Path(run_dir) / "history.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def quiet_train(*args, **kwargs):
    """train() with its stdout captured; returns (result, printed text)."""
    from deeplense_tf.training import train

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = train(*args, progress=False, **kwargs)
    return result, buffer.getvalue()


# --- config ---------------------------------------------------------------------------------


def test_default_yaml_equals_default_config():
    assert read_yaml(CONFIGS / "default.yaml") == DEFAULT_CONFIG


def test_packaged_presets_load():
    expected = {"default": "resnet", "quickstart": "cnn_lstm", "smoke": "cnn"}
    for name, model in expected.items():
        assert load_config(name)["model"]["name"] == model
    assert load_config("smoke")["training"]["steps_per_epoch"] == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"training.epoch": 3}, "unknown config key training.epoch (did you mean training.epochs?)"),
        ({"trainng": {"epochs": 3}}, "unknown config key trainng (did you mean training?)"),
        ({"data": {"augmnt": "d4"}}, "unknown config key data.augmnt"),
        ({"training.batch_size": 0}, "training.batch_size must be >= 1"),
        ({"training.batch_size": 2.5}, "training.batch_size must be int"),
        ({"training.mixed_precision": "yes"}, "training.mixed_precision must be bool"),
        ({"training.learning_rate": -1}, "training.learning_rate must be > 0"),
        ({"training.learning_rate": "fast"}, "training.learning_rate must be float"),
        ({"data.augment": "d8"}, "data.augment must be one of none, exact, d4"),
        ({"model.head": "laplace"}, "model.head must be one of gaussian,"),
        ({"model.name": "alexnet"}, "unknown model 'alexnet'"),
        ({"model.normalization": "log"}, "model.normalization must be one of"),
        ({"training.strategy": "tpu"}, "training.strategy must be one of default, mirrored, multi_worker"),
        ({"training.final_lr_fraction": 1.0}, "training.final_lr_fraction must be in [0, 1)"),
        ({"training.freeze_encoder_epochs": 2}, "training.freeze_encoder_epochs needs training.init_from"),
        ({"training.monitor": "accuracy"}, "training.monitor must be val_loss, val_mae or val_<target>_mae"),
        ({"model": 3}, "model is a section"),
        ({"seed": None}, "seed must not be null"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    assert message in str(info.value)


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("training:\n  epochs: 3\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"exp.yaml: unknown config key training.lerning_rate \(did you mean training.learning_rate\?\)"):
        load_config(path)
    path.write_text("training: [1, 2\n")
    with pytest.raises(ConfigError, match="exp.yaml: not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")


def test_config_merge_overrides_and_round_trip(tmp_path):
    path = tmp_path / "exp.yaml"
    # `1e-3` without a dot is a string to YAML 1.1; the config reads the number it means.
    path.write_text("model:\n  options: {width: 8, depth: 18}\ntraining:\n  learning_rate: 1e-3\n")
    config = load_config(path, {"model.options.width": 16, "training": {"epochs": 4}})
    assert config["model"]["options"] == {"width": 16, "depth": 18}
    assert config["training"]["learning_rate"] == pytest.approx(1e-3)
    assert config["training"]["epochs"] == 4
    assert config["training"]["batch_size"] == DEFAULT_CONFIG["training"]["batch_size"]
    save_config(config, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config


def test_smoke_shrinks_to_seconds():
    config = load_config(overrides={"smoke": True, "training.epochs": 50, "training.batch_size": 256})
    t = config["training"]
    assert (t["epochs"], t["batch_size"], t["steps_per_epoch"], t["validation_steps"]) == (2, 8, 3, 2)
    assert apply_smoke(config) == config  # idempotent


def test_committed_benchmark_configs_load():
    from deeplense_tf.models import MODEL_NAMES, model_options

    paths = sorted((CONFIGS.parents[1] / "configs").glob("benchmark-*.yaml"))
    configs = {p.stem: load_config(p) for p in paths}
    cpu = {name: c for name, c in configs.items() if not name.endswith("-gpu")}
    assert {c["model"]["name"] for c in cpu.values()} == set(MODEL_NAMES)
    for name, config in configs.items():
        unknown = set(config["model"]["options"]) - set(model_options(config["model"]["name"]))
        assert not unknown, f"{name}: {unknown}"
    # Same data and budget for every architecture in the CPU comparison (other budgets,
    # such as the 90-minute CNN-LSTM, say so in their names).
    comparison = [configs[f"benchmark-model2-{c['model']['name']}"] for c in cpu.values()]
    assert {(c["data"]["path"], c["training"]["time_budget_minutes"]) for c in comparison} == {
        ("data/model2-axion", 45.0)
    }
    gpu = configs["benchmark-model2-resnet-gpu"]["training"]
    assert gpu["mixed_precision"] and gpu["strategy"] == "mirrored"


# --- schedule -------------------------------------------------------------------------------


def test_warmup_cosine_matches_numpy():
    from deeplense_tf.training.schedules import WarmupCosineDecay, warmup_cosine_numpy

    schedule = WarmupCosineDecay(2e-3, warmup_steps=10, total_steps=110, final_fraction=0.05)
    steps = np.arange(0, 130)
    got = np.array([float(schedule(s)) for s in steps])
    want = warmup_cosine_numpy(steps, 2e-3, 10, 110, 0.05)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-10)
    # Spot values written out: linear warm-up, the peak, half-way, the floor.
    assert got[0] == pytest.approx(2e-4)
    assert got[9] == pytest.approx(2e-3)
    assert got[10] == pytest.approx(2e-3)
    assert got[60] == pytest.approx(2e-3 * (0.05 + 0.95 * 0.5), rel=1e-5)
    assert got[110] == pytest.approx(1e-4) and got[129] == pytest.approx(1e-4)
    assert np.all(np.diff(got[:10]) > 0) and np.all(np.diff(got[10:111]) <= 0)


def test_schedules_serialize_and_fine_tuning_phases():
    import keras

    from deeplense_tf.training import make_schedule
    from deeplense_tf.training.schedules import PhasedSchedule

    config = load_config(overrides={"training.learning_rate": 1e-3, "training.epochs": 4,
                                    "training.warmup_epochs": 1, "training.init_from": "somewhere",
                                    "training.freeze_encoder_epochs": 2,
                                    "training.finetune_lr_factor": 0.1})
    schedule = make_schedule(config, steps_per_epoch=10)
    assert isinstance(schedule, PhasedSchedule)
    # Head-only phase at the full rate, then all layers at a tenth, each warmed up.
    assert float(schedule(9)) == pytest.approx(1e-3)
    assert float(schedule(20)) == pytest.approx(1e-4 / 10)  # first step of phase 2's warm-up
    assert float(schedule(29)) == pytest.approx(1e-4)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    for step in (0, 5, 19, 20, 25, 39):
        assert float(clone(step)) == pytest.approx(float(schedule(step)))


def test_early_stopping_and_time_budget_decisions():
    from deeplense_tf.training.loop import early_stopping_update, epochs_that_fit

    best, wait, stops = None, 0, []
    for value in [1.0, 0.9, 0.95, 0.9, 0.8, 0.85, 0.86]:
        improved, best, wait, stop = early_stopping_update(value, best, wait, patience=2)
        stops.append((improved, wait, stop))
    # 0.9 again is no improvement (strictly lower only); two bad epochs in a row stop.
    assert stops == [(True, 0, False), (True, 0, False), (False, 1, False), (False, 2, True),
                     (True, 0, False), (False, 1, False), (False, 2, True)]
    assert early_stopping_update(5.0, 1.0, 100, patience=None)[3] is False
    assert epochs_that_fit(100.0, 30.0) == 3 and epochs_that_fit(-1.0, 30.0) == 0


def test_time_budget_plan_shrinks_at_once_and_grows_back():
    """A slow first epoch (cache fill, a busy machine) must not cut the run for good."""
    from deeplense_tf.training.loop import REPLAN_UP_MARGIN, budget_plan

    # After epoch 1 only 14 more fit: shrink from the configured 200 to 15.
    assert budget_plan(epoch=1, planned=200, configured=200, fit=14) == 15
    # Epochs got faster: 24 more fit after epoch 2, so the plan grows to 26...
    assert budget_plan(epoch=2, planned=15, configured=200, fit=24) == 26
    # ...but never past the configured epochs.
    assert budget_plan(epoch=2, planned=15, configured=20, fit=24) == 20
    # Timing noise of less than the margin leaves the schedule alone.
    assert budget_plan(epoch=5, planned=26, configured=200, fit=21 + REPLAN_UP_MARGIN - 1) is None
    assert budget_plan(epoch=5, planned=26, configured=200, fit=21) is None
    # One epoch fewer than planned fits: shrink at once (the budget is a promise).
    assert budget_plan(epoch=5, planned=26, configured=200, fit=20) == 25
    # Late in the plan the annealed learning rate is not lifted again...
    assert budget_plan(epoch=20, planned=26, configured=200, fit=30) is None
    assert budget_plan(epoch=17, planned=26, configured=200, fit=30) == 47
    # ...but shrinking still happens to the last epoch.
    assert budget_plan(epoch=24, planned=26, configured=200, fit=1) == 25


def test_make_datasets_and_compile_model_for_fit(data_dir, tmp_path):
    """What tuning and notebooks use: the config's pipelines and a compiled model for fit()."""
    import keras

    from deeplense_tf.training import compile_model, make_datasets
    from deeplense_tf.training.model_setup import build_model_from_config
    from deeplense_tf.training.schedules import WarmupCosineDecay

    config = tiny_config(data_dir)
    train_ds, val_ds, stats, manifest = make_datasets(config)
    images, targets = next(iter(train_ds))
    assert images.shape == (8, 16, 16, 1) and set(targets) == set(TARGETS)
    assert targets[TARGETS[0]].shape == (8, 1)
    assert sum(int(x.shape[0]) for x, _ in val_ds) == 16  # the whole split, remainder kept
    assert stats[TARGETS[0]]["mean"] == pytest.approx(manifest["target_stats"][TARGETS[0]]["mean"])
    # Standardised targets: the train split's mean and std map to 0 and 1.
    values = np.concatenate([y[TARGETS[0]].numpy()[:, 0] for _, y in train_ds])
    assert abs(values.mean()) < 0.5 and 0.5 < values.std() < 1.5

    model = compile_model(build_model_from_config(config, (16, 16, 1), TARGETS), config, steps_per_epoch=8)
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert isinstance(model.optimizer._learning_rate, WarmupCosineDecay)
    history = model.fit(train_ds, epochs=1, steps_per_epoch=2, shuffle=False, verbose=0)
    assert {"loss", f"{TARGETS[0]}_mae"} <= set(history.history)
    model.save(tmp_path / "compiled.keras")
    reloaded = keras.saving.load_model(tmp_path / "compiled.keras")  # schedule registered
    assert float(reloaded.optimizer.learning_rate) == pytest.approx(float(model.optimizer.learning_rate))


# --- data and runs --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "blobs", counts={"train": 64, "val": 16, "test": 16})


@pytest.fixture(scope="module")
def other_data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data2") / "blobs", counts={"train": 48, "val": 16, "test": 8}, seed=1)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, data_dir):
    """A Gaussian-head run interrupted after epoch 1 (Ctrl-C after its backup) and resumed."""
    from deeplense_tf.training import train

    out = tmp_path_factory.mktemp("runs") / "gaussian"
    config = tiny_config(data_dir)
    with pytest.raises(KeyboardInterrupt), contextlib.redirect_stdout(io.StringIO()):
        train(config, out, progress=False, _interrupt_after=1)
    state = json.loads((out / "backup" / "state.json").read_text())
    first_history = read_history(out)
    files_while_interrupted = sorted(p.name for p in out.iterdir())
    run, printed = quiet_train(config, out)
    return {"out": out, "config": config, "run": run, "printed": printed, "state": state,
            "first_history": first_history, "files_while_interrupted": files_while_interrupted}


def test_resume_continues_at_the_next_epoch(resumed):
    out, state = resumed["out"], resumed["state"]
    assert state["epoch"] == 1 and state["batches_consumed"] == 8
    assert "run.json" in resumed["files_while_interrupted"]
    assert json.loads((out / "run.json").read_text())["complete"] is True
    assert "resuming" in resumed["printed"] and "after epoch 1" in resumed["printed"]
    assert "epoch 1/3" not in resumed["printed"] and "epoch 2/3" in resumed["printed"]
    history = read_history(out)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[0] == resumed["first_history"][0]
    # The learning rate logged at each epoch's end is the schedule at 8, 16, 24 optimizer
    # steps: the resumed session continued the optimizer's step count.
    from deeplense_tf.training.schedules import warmup_cosine_numpy

    expected = warmup_cosine_numpy([8, 16, 24], 3e-3, 8, 24)
    np.testing.assert_allclose([row["learning_rate"] for row in history], expected, rtol=1e-5, atol=1e-9)
    assert not (out / "backup").exists()


@pytest.mark.slow
def test_resumed_run_equals_an_uninterrupted_one(resumed, tmp_path):
    """The resumed session replays the seeded input pipeline to the same batch and restores
    the optimizer, so the run ends with the weights an uninterrupted run reaches."""
    straight, _ = quiet_train(resumed["config"], tmp_path / "straight")

    def without_time(rows):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert without_time(read_history(tmp_path / "straight")) == without_time(read_history(resumed["out"]))
    for a, b in zip(straight.model.get_weights(), resumed["run"].model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_run_folder_has_every_file(resumed):
    out = resumed["out"]
    for name in ("model.keras", "config.yaml", "target_stats.json", "data_manifest.json", "run.json",
                 "history.csv", "metrics.json", "plots/history.png"):
        assert (out / name).is_file(), name
    assert list((out / "logs" / "train").iterdir()) and list((out / "logs" / "validation").iterdir())
    info = json.loads((out / "run.json").read_text())
    assert info["format_version"] == 1 and info["model"] == "cnn" and info["head"] == "gaussian"
    assert info["targets"] == TARGETS and info["input_shape"] == [16, 16, 1]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["seed"] == 0 and config["data"]["targets"] == TARGETS
    assert Path(config["data"]["path"]).is_absolute()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["stopped"] == "completed"
    assert set(metrics["validation"]["targets"]) == set(TARGETS)
    stats = json.loads((out / "target_stats.json").read_text())
    manifest = json.loads((Path(resumed["config"]["data"]["path"]) / "manifest.json").read_text())
    assert stats["theta_e_arcsec"]["mean"] == pytest.approx(manifest["target_stats"]["theta_e_arcsec"]["mean"])
    # The training loss fell.
    history = read_history(out)
    assert history[-1]["loss"] < history[0]["loss"]


def test_training_calibrates_the_stds_and_calibrate_run_composes(resumed, tmp_path):
    """The run's stds were scaled on the val split at the end of training; `calibrate_run`
    rescales a copy again and records the new fit, and each scale lands in the model."""
    from deeplense_tf.training import Run
    from deeplense_tf.training.calibrate import calibrate_run

    fits = json.loads((resumed["out"] / "metrics.json").read_text())["variance_calibration"]
    assert fits["split"] == "val" and set(fits["targets"]) == set(TARGETS)
    model = resumed["run"].model
    for t in TARGETS:
        scale = fits["targets"][t]["scale"]
        assert scale > 0
        offset = float(model.get_layer(t).log_variance_offset.numpy())
        assert offset == pytest.approx(2 * np.log(scale), abs=1e-6)

    copy = tmp_path / "run"
    shutil.copytree(resumed["out"], copy)
    before = Run.load(copy)
    assert before.calibration == fits
    images = np.random.default_rng(0).uniform(size=(3, 16, 16, 1)).astype("float32")
    std_before = before.predict(images)
    with contextlib.redirect_stdout(io.StringIO()):
        again = calibrate_run(copy, split="val")
    recorded = json.loads((copy / "metrics.json").read_text())["variance_calibration"]
    assert recorded["split"] == "val" and set(recorded["targets"]) == set(TARGETS)
    # The run folder contract: where its parts are, and the calibration record it keeps.
    after = Run.load(copy)
    assert after.paths.model == copy / "model.keras" and after.paths.eval == copy / "eval"
    assert after.calibration == recorded  # read from metrics.json when asked
    assert after.data_path() == before.config["data"]["path"]
    std_after = after.predict(images)
    for t in TARGETS:
        assert again[t]["calibration_error_after"] <= again[t]["calibration_error_before"]
        np.testing.assert_allclose(std_after[t]["std"] / std_before[t]["std"], again[t]["scale"], rtol=1e-5)
        np.testing.assert_allclose(std_after[t]["mean"], std_before[t]["mean"], rtol=1e-6)


def test_calibration_off_leaves_the_stds(data_dir, tmp_path):
    run, _ = quiet_train(tiny_config(data_dir, **{"training.epochs": 1, "training.calibrate_variance": False}),
                         tmp_path / "off")
    assert "variance_calibration" not in json.loads((tmp_path / "off" / "metrics.json").read_text())
    assert float(run.model.get_layer(TARGETS[0]).log_variance_offset.numpy()) == 0.0


def test_predict_matches_model_outputs_in_physical_units(resumed, data_dir):
    from deeplense_tf.data import load_examples
    from deeplense_tf.training import Run

    run = Run.load(resumed["out"])
    assert run.head == "gaussian" and run.targets == TARGETS and run.input_shape == (16, 16, 1)
    images = load_examples(data_dir, "test").images
    raw = run.model.predict(images, verbose=0)
    preds = run.predict(images, batch_size=5)
    for t in TARGETS:
        mean, std = run.target_stats[t]["mean"], run.target_stats[t]["std"]
        np.testing.assert_allclose(preds[t]["mean"], raw[t][:, 0] * std + mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(preds[t]["std"], np.exp(0.5 * raw[t][:, 1]) * std, rtol=1e-5)
    # [N, H, W] works for one-channel models.
    np.testing.assert_allclose(run.predict(images[..., 0])[TARGETS[0]]["mean"], preds[TARGETS[0]]["mean"])
    with pytest.raises(DataError, match=r"do not fit this run's model, which takes \[N, 16, 16, 1\]"):
        run.predict(np.zeros((2, 32, 32, 1), np.float32))
    bad = images[:3].copy()
    bad[1, 4, 4, 0] = np.nan
    with pytest.raises(DataError, match="NaN or infinite pixels"):
        run.predict(bad)


def test_tta_averages_views_mapped_back(resumed, data_dir):
    from deeplense_tf.data import augment, load_examples
    from deeplense_tf.training import Run

    run = Run.load(resumed["out"])
    images = load_examples(data_dir, "test", limit=6).images
    tta = run.predict(images, tta=True)
    views = [run.predict(augment.transform_image(images, g)) for g in augment.D4_ELEMENTS]
    # Scalar target: plain average of the eight views.
    theta = np.stack([v["theta_e_arcsec"]["mean"] for v in views])
    np.testing.assert_allclose(tta["theta_e_arcsec"]["mean"], theta.mean(0), rtol=1e-6)
    # Position (vector) targets: each view's prediction rotated back with the inverse matrix.
    back = []
    for g, v in zip(augment.D4_ELEMENTS, views):
        xy = np.stack([v["source_x_arcsec"]["mean"], v["source_y_arcsec"]["mean"]])
        back.append(augment.vector_matrix(g).T @ xy)  # orthogonal: inverse = transpose
    back = np.stack(back)  # [8, 2, N]
    np.testing.assert_allclose(tta["source_x_arcsec"]["mean"], back[:, 0].mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(tta["source_y_arcsec"]["mean"], back[:, 1].mean(0), rtol=1e-5, atol=1e-7)
    # Mixture variance: mean of the variances plus the variance of the means.
    var = np.stack([v["theta_e_arcsec"]["std"] ** 2 for v in views]).mean(0) + theta.var(0)
    np.testing.assert_allclose(tta["theta_e_arcsec"]["std"], np.sqrt(var), rtol=1e-5)


def test_embedding_model(resumed, data_dir):
    from deeplense_tf.training import Run

    run = Run.load(resumed["out"])
    images = np.zeros((2, 16, 16, 1), np.float32)
    features = run.embedding_model().predict(images, verbose=0)
    assert features.ndim == 2 and features.shape[0] == 2
    first_conv = next(layer.name for layer in run.model.layers if "conv" in layer.name)
    assert run.embedding_model(first_conv).output_shape[1:3] == (16, 16)
    with pytest.raises(RunError, match="has no layer 'nope'; valid layer names: image, preprocess"):
        run.embedding_model("nope")


def test_run_load_errors(resumed, tmp_path):
    from deeplense_tf.training import Run

    with pytest.raises(RunError, match="no such run folder"):
        Run.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match=r"not a run folder \(no run.json\)"):
        Run.load(tmp_path / "empty")

    def copy_with(info_update=None, drop=None):
        target = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(resumed["out"], target)
        if info_update:
            info = json.loads((target / "run.json").read_text())
            info.update(info_update)
            (target / "run.json").write_text(json.dumps(info))
        if drop:
            (target / drop).unlink()
        return target

    with pytest.raises(RunError, match="run format_version 2 .* reads format_version 1"):
        Run.load(copy_with({"format_version": 2, "deeplense_tf": "9.0"}))
    with pytest.raises(RunError, match="incomplete run .* resume"):
        Run.load(copy_with({"complete": False}))
    with pytest.raises(RunError, match="missing model.keras"):
        Run.load(copy_with(drop="model.keras"))


def test_finished_or_foreign_run_folders_are_refused(resumed, other_data_dir, tmp_path):
    from deeplense_tf.training import train

    with pytest.raises(RunError, match="holds a finished run; pass --overwrite"):
        train(resumed["config"], resumed["out"])
    # An interrupted run folder (config, manifest copy, a backup) of another config or data set.
    folder = tmp_path / "interrupted"
    folder.mkdir()
    for name in ("config.yaml", "data_manifest.json"):
        shutil.copy(resumed["out"] / name, folder / name)
    (folder / "backup").mkdir()
    (folder / "backup" / "state.json").write_text("{}")
    (folder / "backup" / "ckpt.index").write_text("")
    changed = dict(resumed["config"], training=dict(resumed["config"]["training"], learning_rate=1e-4))
    with pytest.raises(RunError, match=r"different config \(training.learning_rate \(0.003 there, 0.0001 now\)"):
        train(changed, folder)
    other = tiny_config(other_data_dir)
    with pytest.raises(RunError, match="trained on another data set"):
        train(other, folder)


def test_backup_survives_a_crash_mid_write(tmp_path, monkeypatch):
    import tensorflow as tf

    from deeplense_tf.training import resume

    variable = tf.Variable([1.0, 2.0])
    checkpoint = tf.train.Checkpoint(v=variable)
    resume.write_backup(tmp_path, checkpoint, {"epoch": 1}, chief=True)
    variable.assign([3.0, 4.0])

    def crash(path, value):  # dies after the checkpoint, before state.json: like a kill -9
        raise KeyboardInterrupt

    monkeypatch.setattr(resume, "write_json_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        resume.write_backup(tmp_path, checkpoint, {"epoch": 2}, chief=True)
    monkeypatch.undo()
    prefix, state = resume.read_backup(tmp_path)
    assert state == {"epoch": 1}
    checkpoint.read(prefix).assert_consumed()
    np.testing.assert_array_equal(variable.numpy(), [1.0, 2.0])

    # Killed between the two renames of the swap: only backup.old and backup.new exist.
    resume.write_backup(tmp_path, checkpoint, {"epoch": 2}, chief=True)
    (tmp_path / "backup").rename(tmp_path / "backup.new")
    shutil.copytree(tmp_path / "backup.new", tmp_path / "backup.old")
    (tmp_path / "backup.old" / "state.json").write_text(json.dumps({"epoch": 1}))
    assert resume.read_backup(tmp_path)[1] == {"epoch": 2}
    resume.write_backup(tmp_path, checkpoint, {"epoch": 3}, chief=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup"]
    assert resume.read_backup(tmp_path)[1] == {"epoch": 3}


def test_point_head_mixed_precision_and_time_budget_via_cli(data_dir, tmp_path, capsys):
    from deeplense_tf.cli import main

    out = tmp_path / "point"
    args = ["train", "--data", str(data_dir), "--model", "cnn", "--out", str(out), "--epochs", "4",
            "--batch-size", "8", "--seed", "3", "--set", "model.head=point", "--set", "model.crop=null",
            "--set", "model.normalization=none", "--set", "model.options={width: 4, blocks: 1, convs_per_block: 1}",
            "--set", f"data.targets={TARGETS[:1]}", "--set", "training.mixed_precision=true",
            "--set", "training.time_budget_minutes=0.0001", "--set", "training.bn_recalibration_batches=1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'config.yaml'}" in printed and "time budget spent" in printed
    assert "only 1 epoch(s) of 8 steps fit" in printed and "training.steps_per_epoch" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped"] == "time_budget" and metrics["epochs"] == 1
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["seed"] == 3 and config["model"]["head"] == "point"

    import keras

    from deeplense_tf.training import Run

    run = Run.load(out)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after training
    assert all(layer.dtype_policy.name == "float32" for layer in run.model.layers)  # saved in float32
    preds = run.predict(np.ones((2, 16, 16, 1), np.float32))
    assert preds[TARGETS[0]]["std"] is None and preds[TARGETS[0]]["mean"].shape == (2,)

    # Bad input is one line on stderr and exit status 1.
    assert main(["train", "--data", str(data_dir), "--out", str(tmp_path / "x"), "--set", "training.epoch=3"]) == 1
    assert "unknown config key training.epoch" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 1
    assert "no such data directory" in capsys.readouterr().err


def test_nan_loss_stops_with_the_likely_cause(data_dir, tmp_path):
    from deeplense_tf.training import TrainingDiverged

    config = tiny_config(data_dir, **{"training.learning_rate": 1e30, "training.warmup_epochs": 0})
    with pytest.raises(TrainingDiverged) as info:
        quiet_train(config, tmp_path / "nan")
    message = str(info.value)
    assert re.search(r"training diverged: the training \(step \d+\) loss became (nan|inf) in epoch 1", message)
    assert "learning rate is too high" in message and "log-variance" in message
    assert isinstance(info.value, ConfigError)  # the CLI prints it as one line


def test_fine_tuning_freezes_then_unfreezes_the_encoder(resumed, other_data_dir, tmp_path):
    import keras

    from deeplense_tf.models import encoder_layers, head_layers
    from deeplense_tf.training import train

    source = keras.saving.load_model(resumed["out"] / "model.keras")
    out = tmp_path / "finetuned"
    # Model settings and targets come from the source run; only the data and schedule differ.
    config = load_config(overrides={
        "data.path": str(other_data_dir), "model": resumed["config"]["model"],
        "training.init_from": str(resumed["out"]), "training.freeze_encoder_epochs": 1,
        "training.epochs": 2, "training.batch_size": 8, "training.learning_rate": 3e-3,
        "training.bn_recalibration_batches": 0,
    })
    with pytest.raises(KeyboardInterrupt), contextlib.redirect_stdout(io.StringIO()) as printed:
        train(config, out, progress=False, _interrupt_after=1)
    assert "initialised" in printed.getvalue() and "encoder frozen" in printed.getvalue()
    after_frozen = keras.saving.load_model(out / "model.keras")  # the best (only) epoch so far

    def weights(model, layers):
        return [w for layer in layers(model) for w in layer.get_weights()]

    for a, b in zip(weights(source, encoder_layers), weights(after_frozen, encoder_layers)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in
               zip(weights(source, head_layers), weights(after_frozen, head_layers)))

    # Epoch 2 trains every layer; stop before the best weights are restored and read the
    # backup, which holds the model as it was after epoch 2.
    with pytest.raises(KeyboardInterrupt), contextlib.redirect_stdout(io.StringIO()) as printed:
        train(config, out, progress=False, _interrupt_after=2)
    assert "encoder unfrozen" in printed.getvalue()
    import tensorflow as tf

    from deeplense_tf.training.model_setup import build_model_from_config
    from deeplense_tf.training.resume import read_backup

    after_unfrozen = build_model_from_config(config, (16, 16, 1), TARGETS)
    tf.train.Checkpoint(model=after_unfrozen).read(read_backup(out)[0]).expect_partial()
    def trainable(model, layers):  # the head's calibration offset is not trained
        return [w.numpy() for layer in layers(model) for w in layer.trainable_weights]

    for a, b in zip(trainable(after_frozen, head_layers), trainable(after_unfrozen, head_layers)):
        assert not np.array_equal(a, b)
    changed = [not np.array_equal(a, b) for a, b in
               zip(weights(source, encoder_layers), weights(after_unfrozen, encoder_layers))]
    assert sum(changed) >= len(changed) // 2  # kernels and BN statistics alike

    info = json.loads((out / "run.json").read_text())
    assert info["targets"] == TARGETS and info["init_from"] == str(resumed["out"].resolve())
    lrs = [row["learning_rate"] for row in read_history(out)]
    # The rate for the next step: after epoch 1 the start of phase 2 (3e-3 * 0.1, one
    # epoch, so no warm-up); after epoch 2 the end of its cosine.
    assert lrs == pytest.approx([3e-4, 0.0], abs=1e-9)


def test_fine_tuning_refuses_an_incompatible_run(resumed, other_data_dir, tmp_path):
    config = load_config(overrides={
        "data.path": str(other_data_dir), "data.targets": TARGETS,
        "model": dict(resumed["config"]["model"], options={"width": 6, "blocks": 2, "convs_per_block": 1}),
        "training.init_from": str(resumed["out"]), "training.epochs": 1, "training.batch_size": 8,
    })
    with pytest.raises(RunError, match=r"cannot initialise from .*gaussian: layer '.*' weights .* there, .* here"):
        quiet_train(config, tmp_path / "bad")
    config = load_config(overrides={
        "data.path": str(other_data_dir), "data.targets": TARGETS[:1], "model": resumed["config"]["model"],
        "training.init_from": str(resumed["out"]), "training.epochs": 1, "training.batch_size": 8,
    })
    with pytest.raises(RunError, match=r"targets \['theta_e_arcsec', 'source_x_arcsec', 'source_y_arcsec'\] there, \['theta_e_arcsec'\] here"):
        quiet_train(config, tmp_path / "bad2")


def test_train_command_options(resumed):
    import argparse

    from deeplense_tf.training import train_cli as commands

    parser = argparse.ArgumentParser()
    commands.add_arguments(parser)
    args = parser.parse_args(["--data", "new", "--out", "ft", "--init-from", str(resumed["out"]),
                              "--freeze-encoder-epochs", "2", "--set", "training.learning_rate=1e-4",
                              "--set", "data.augment=exact"])
    overrides = commands.build_overrides(args)
    # Fine-tuning without --config takes the model settings and targets of the source run.
    assert overrides["model"] == resumed["config"]["model"]
    assert overrides["data.targets"] == TARGETS
    config = load_config(args.config, overrides)
    assert config["training"]["freeze_encoder_epochs"] == 2 and config["data"]["path"] == "new"
    assert config["training"]["learning_rate"] == pytest.approx(1e-4) and config["data"]["augment"] == "exact"
    args = parser.parse_args(["--out", "x", "--model", "vit", "--config", "smoke", "--epochs", "7"])
    config = load_config(args.config, commands.build_overrides(args))
    assert config["model"]["name"] == "vit" and config["training"]["epochs"] == 2  # smoke caps it
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        commands.parse_set_options(["training.epochs"])
    with pytest.raises(ConfigError, match="no data set: give --data DIR"):
        commands.run(parser.parse_args(["--out", "x"]))


def test_jit_compiled_steps_train_like_the_graph_steps(data_dir, tmp_path):
    """`training.jit_compile` (XLA for the forward and backward pass) changes the kernels,
    not the maths: the same seed gives the same losses to float32 rounding."""
    histories = {}
    for jit in (False, True):
        quiet_train(tiny_config(data_dir, **{"training.epochs": 2, "training.jit_compile": jit}),
                    tmp_path / f"jit-{jit}")
        histories[jit] = read_history(tmp_path / f"jit-{jit}")
    for plain, compiled in zip(histories[False], histories[True]):
        for key in ("loss", "val_loss"):
            assert compiled[key] == pytest.approx(plain[key], rel=2e-3, abs=1e-4), key

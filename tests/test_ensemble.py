"""Ensembles: the mixture maths against NumPy (both heads), `ensemble_runs` writing a run
folder that Run.load / predict / evaluate / export accept, save-reload equality, and the
errors for runs that do not fit together.

Member runs are written directly (untrained tiny CNNs with the run-folder files): the
ensemble only combines outputs, so training them would add minutes and test nothing more.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml
from data_fixtures import write_dataset

from deeplense_tf.errors import RunError
from deeplense_tf.models.ensemble import GaussianMixtureCombine, build_ensemble_model
from deeplense_tf.runs import Run
from deeplense_tf.training.config import load_config, save_config
from deeplense_tf.training.ensemble import ensemble_runs

TARGETS = ["theta_e_arcsec", "source_x_arcsec"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("ens-data"), counts={"train": 16, "val": 8, "test": 12})


def make_run(path, data_dir, *, head="gaussian", seed=0, targets=TARGETS, stats=None, size=16,
             preset=None) -> Path:
    """A finished run folder holding an untrained tiny CNN (random weights per seed)."""
    from deeplense_tf.models import build_model

    path = Path(path)
    path.mkdir(parents=True)
    keras.utils.set_random_seed(seed)
    model = build_model("cnn", (size, size, 1), targets, head=head, normalization="none", crop=None,
                        width=4, blocks=1, convs_per_block=1)
    # Spread the random outputs: a large head bias for the log-variance would be dull.
    for t in targets:
        layer = model.get_layer(t if head == "point" else f"head_{t}")
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * 3.0, bias + np.linspace(-0.5, 0.5, bias.size)])
    model.save(path / "model.keras")
    config = load_config(overrides={"data.path": str(data_dir), "data.targets": targets, "model.name": "cnn",
                                    "model.head": head, "seed": seed})
    save_config(config, path / "config.yaml")
    stats = stats or {t: {"mean": 0.1 * (i + 1) + seed, "std": 0.5 + 0.25 * seed} for i, t in enumerate(targets)}
    (path / "target_stats.json").write_text(json.dumps(stats))
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    if preset:
        manifest["preset"] = preset
    (path / "data_manifest.json").write_text(json.dumps(manifest))
    info = {"format_version": 1, "deeplense_tf": "test", "model": "cnn", "head": head, "targets": targets,
            "input_shape": [size, size, 1], "complete": True}
    (path / "run.json").write_text(json.dumps(info))
    return path


@pytest.fixture(scope="module")
def members(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("members")
    return [
        make_run(root / "gauss0", data_dir, seed=0),
        make_run(root / "gauss1", data_dir, seed=1),
        make_run(root / "point2", data_dir, seed=2, head="point"),
    ]


@pytest.fixture(scope="module")
def images(data_dir):
    from deeplense_tf.data import load_examples

    return load_examples(str(data_dir), split="test").images


def numpy_mixture(predictions):
    """Equal-weight mixture of per-member Gaussians (std None = point estimate, no variance)."""
    means = np.stack([p["mean"] for p in predictions])
    variances = np.stack([np.zeros_like(p["mean"]) if p["std"] is None else p["std"] ** 2 for p in predictions])
    mean = means.mean(axis=0)
    total = variances.mean(axis=0) + ((means - mean) ** 2).mean(axis=0)
    return mean, np.sqrt(total)


def test_mixture_layer_matches_numpy():
    rng = np.random.default_rng(0)
    batch = 7
    gauss_a = rng.normal(size=(batch, 2)).astype("float32")
    gauss_b = rng.normal(size=(batch, 2)).astype("float32")
    point = rng.normal(size=(batch, 1)).astype("float32")
    means, stds = [1.0, -2.0, 0.5], [0.5, 2.0, 1.5]
    layer = GaussianMixtureCombine(means, stds, output_mean=0.3, output_std=0.7)
    out = np.asarray(layer([gauss_a, gauss_b, point]))

    mu = np.stack([gauss_a[:, 0] * stds[0] + means[0], gauss_b[:, 0] * stds[1] + means[1],
                   point[:, 0] * stds[2] + means[2]])
    var = np.stack([np.exp(gauss_a[:, 1]) * stds[0] ** 2, np.exp(gauss_b[:, 1]) * stds[1] ** 2, np.zeros(batch)])
    expected_mean = mu.mean(axis=0)
    expected_var = var.mean(axis=0) + mu.var(axis=0)  # aleatoric + epistemic
    np.testing.assert_allclose(out[:, 0] * 0.7 + 0.3, expected_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.exp(out[:, 1]) * 0.7**2, expected_var, rtol=1e-4)
    # Total variance is never below the members' mean variance, nor below the spread of means.
    assert np.all(np.exp(out[:, 1]) * 0.49 >= var.mean(axis=0) * (1 - 1e-5))

    config = layer.get_config()
    assert GaussianMixtureCombine.from_config(config).get_config() == config


def test_ensemble_run_predicts_the_mixture_and_reloads_identically(tmp_path, members, images, data_dir):
    out = tmp_path / "ensemble"
    result = ensemble_runs(members, out, calibrate=False)
    for name in ("model.keras", "config.yaml", "target_stats.json", "data_manifest.json", "run.json"):
        assert (out / name).is_file(), name

    info = json.loads((out / "run.json").read_text())
    assert info["model"] == "ensemble" and info["head"] == "gaussian" and info["complete"] is True
    assert info["targets"] == TARGETS and info["input_shape"] == [16, 16, 1]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["name"] == "ensemble"
    assert config["model"]["members"] == [str(p.resolve()) for p in members]
    assert config["model"]["member_heads"] == ["gaussian", "gaussian", "point"]
    assert config["data"]["path"] == str(data_dir)

    loaded = Run.load(out)
    assert loaded.head == "gaussian" and loaded.targets == TARGETS
    assert loaded.target_stats == Run.load(members[0]).target_stats
    with pytest.raises(RunError, match="no layer 'embedding'"):
        loaded.embedding_model()

    member_predictions = [Run.load(m).predict(images) for m in members]
    predicted = loaded.predict(images)
    for t in TARGETS:
        mean, std = numpy_mixture([p[t] for p in member_predictions])
        np.testing.assert_allclose(predicted[t]["mean"], mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(predicted[t]["std"], std, rtol=1e-4)
        assert np.ptp(predicted[t]["std"]) > 0  # varies per image: not a constant

    # The saved model gives exactly what the in-memory one gives.
    runs = [Run.load(m) for m in members]
    in_memory = build_ensemble_model([(r.model, r.target_stats) for r in runs], TARGETS, loaded.target_stats)
    expected, got = in_memory(images[:5]), loaded.model(images[:5])
    for t in TARGETS:
        np.testing.assert_array_equal(np.asarray(got[t]), np.asarray(expected[t]))
    assert result.path == out.resolve()


def test_ensemble_stds_are_calibrated_on_val(tmp_path, members, images):
    plain = ensemble_runs(members, tmp_path / "plain", calibrate=False)
    calibrated = ensemble_runs(members, tmp_path / "calibrated")
    fits = json.loads((tmp_path / "calibrated" / "metrics.json").read_text())["variance_calibration"]
    assert fits["split"] == "val" and set(fits["targets"]) == set(TARGETS)
    a, b = plain.predict(images), calibrated.predict(images)
    for t in TARGETS:
        fit = fits["targets"][t]
        np.testing.assert_allclose(b[t]["mean"], a[t]["mean"], rtol=1e-6)
        np.testing.assert_allclose(b[t]["std"] / a[t]["std"], fit["scale"], rtol=1e-5)
        assert fit["calibration_error_after"] <= fit["calibration_error_before"]


def test_ensemble_run_loads_in_a_fresh_process(tmp_path, members):
    """`deeplense evaluate/export --run ENSEMBLE` start in a process that never imported the
    ensemble module: Run.load must register the mixture layer itself."""
    import subprocess
    import sys

    out = tmp_path / "ensemble"
    ensemble_runs(members, out, calibrate=False)
    # Loading a run needs models/ only: training (which writes runs) stays unimported, but
    # for the learning-rate schedules `import deeplense_tf` registers with Keras.
    code = (f"import sys, deeplense_tf; from deeplense_tf.runs import Run; print(Run.load({str(out)!r}).head); "
            "print(sorted(m for m in sys.modules if m.startswith('deeplense_tf.training.')"
            " and m not in deeplense_tf.KERAS_OBJECT_MODULES))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    head, training_modules = result.stdout.strip().splitlines()[-2:]
    assert head.endswith("gaussian")
    assert training_modules == "[]"


def test_ensemble_saved_before_the_mixture_layer_moved_loads(tmp_path, members, images):
    """Ensembles saved when the mixture layer lived in training/ensemble.py name that module
    in model.keras; they load (by the registered name) and predict the same."""
    import zipfile

    out = tmp_path / "ensemble"
    run = ensemble_runs(members, out, calibrate=False)
    expected = run.predict(images)
    model_file = out / "model.keras"
    with zipfile.ZipFile(model_file) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    config = entries["config.json"].decode()
    assert '"deeplense_tf.models.ensemble"' in config
    entries["config.json"] = config.replace('"deeplense_tf.models.ensemble"',
                                            '"deeplense_tf.training.ensemble"').encode()
    with zipfile.ZipFile(model_file, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    old = Run.load(out).predict(images)
    for t in TARGETS:
        np.testing.assert_allclose(old[t]["mean"], expected[t]["mean"], rtol=1e-6)
        np.testing.assert_allclose(old[t]["std"], expected[t]["std"], rtol=1e-6)


def test_ensemble_is_evaluated_and_exported_like_any_run(tmp_path, members, data_dir):
    from deeplense_tf.cli import main
    from deeplense_tf.evaluation.evaluate_cli import evaluate_command
    from deeplense_tf.export.exporter import export_run

    out = tmp_path / "ens"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["ensemble", "--runs", str(members[0]), str(members[2]), "--out", str(out)]) == 0
    assert f"wrote {out.resolve() / 'model.keras'}" in buffer.getvalue()

    metrics = evaluate_command(out, verbose=False)  # default data: the members' data.path
    overall = metrics["targets"][TARGETS[0]]["overall"]
    assert metrics["head"] == "gaussian" and metrics["examples"] == 12
    assert np.isfinite([overall["mae"], overall["nll"], overall["coverage_68"], overall["coverage_95"]]).all()

    written = export_run(out, tmp_path / "serving", name="ens", progress=False, check_count=4)
    assert (Path(written["version_dir"]) / "saved_model.pb").is_file()
    report = json.loads(Path(written["report"]).read_text())
    assert "ensemble" in json.dumps(report)


@pytest.fixture(scope="module")
def t_members(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("t-members")
    return [make_run(root / "t0", data_dir, seed=0, head="student_t"),
            make_run(root / "t1", data_dir, seed=1, head="student_t"),
            make_run(root / "g2", data_dir, seed=2)]


def test_student_t_members_keep_their_tails(tmp_path, t_members, images):
    """The ensemble's predictive is the mixture of its members' t distributions (a Gaussian
    member as a t of GAUSSIAN_DF), whose moments are the model's mean and std."""
    from deeplense_tf.models.ensemble import GAUSSIAN_DF
    from deeplense_tf.predictive import Predictive

    run = ensemble_runs(t_members, tmp_path / "ens", calibrate=False)
    members = [Run.load(m).predict(images) for m in t_members]
    predicted = run.predict(images)
    for t in TARGETS:
        components = predicted[t]["components"]
        assert components["group_size"] == 3 and components["mean"].shape == (3, len(images))
        np.testing.assert_allclose(components["mean"], np.stack([m[t]["mean"] for m in members]), rtol=1e-5)
        np.testing.assert_allclose(components["std"], np.stack([m[t]["std"] for m in members]), rtol=1e-5)
        np.testing.assert_allclose(components["df"][:2], np.stack([m[t]["df"] for m in members[:2]]), rtol=1e-6)
        assert (components["df"][2] == GAUSSIAN_DF).all()
        mixture = Predictive.from_prediction(predicted[t])
        mean, std = mixture.moments()
        np.testing.assert_allclose(mean, predicted[t]["mean"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(std, predicted[t]["std"], rtol=1e-4)
        # Heavier tails than the Gaussian of the same moments: more mass beyond 4 stds.
        far = predicted[t]["mean"] + 4.0 * predicted[t]["std"]
        assert np.all(1.0 - mixture.cdf(far) > 1.0 - Predictive(mean, std).cdf(far))

    # Under TTA: 8 views x 3 members, groups of 3, still the moments the run reports.
    tta = run.predict(images, tta=True)[TARGETS[0]]
    assert tta["components"]["mean"].shape == (24, len(images)) and tta["components"]["group_size"] == 3
    mean, std = Predictive.from_prediction(tta).moments()
    np.testing.assert_allclose(mean, tta["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, tta["std"], rtol=1e-4)


def test_a_point_member_leaves_the_moments_only(tmp_path, members, images):
    run = ensemble_runs(members, tmp_path / "ens", calibrate=False)
    assert "components" not in run.predict(images)[TARGETS[0]]


def test_the_calibration_stretches_the_members_mixture(tmp_path, t_members, images):
    """Calibrating an ensemble fits its mixture and stretches it about its mean (the layer's
    offset scales the total variance): the components follow, the moments stay the model's."""
    from deeplense_tf.predictive import Predictive

    plain = ensemble_runs(t_members, tmp_path / "plain", calibrate=False).predict(images)
    run = ensemble_runs(t_members, tmp_path / "calibrated")
    fits = json.loads((tmp_path / "calibrated" / "metrics.json").read_text())["variance_calibration"]["targets"]
    calibrated = run.predict(images)
    for t in TARGETS:
        scale = fits[t]["scale"]
        assert fits[t]["family"] == "student_t" and fits[t]["components"] == 3 and scale != 1.0
        before, after = plain[t]["components"], calibrated[t]["components"]
        centre = plain[t]["mean"]
        np.testing.assert_allclose(after["mean"] - centre, scale * (before["mean"] - centre), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(after["std"], scale * before["std"], rtol=1e-4)
        mean, std = Predictive.from_prediction(calibrated[t]).moments()
        np.testing.assert_allclose(std, calibrated[t]["std"], rtol=1e-4)
        # What the fit scored is what the run now predicts.
        stretched = Predictive.from_prediction(plain[t]).with_scale(scale)
        np.testing.assert_allclose(stretched.mean, after["mean"], rtol=1e-4, atol=1e-6)


def test_evaluate_scores_the_members_mixture(tmp_path, t_members):
    from deeplense_tf.data import load_examples
    from deeplense_tf.evaluation.evaluate_cli import evaluate_command
    from deeplense_tf.predictive import Predictive

    out = tmp_path / "ens"
    run = ensemble_runs(t_members, out, calibrate=False)
    metrics = evaluate_command(out, verbose=False)
    assert metrics["distribution"][TARGETS[0]] == {"family": "student_t", "components": 3}
    test = load_examples(str(run.data_path(None)), split="test")
    t = TARGETS[0]
    mixture = Predictive.from_prediction(run.predict(test.images)[t])
    overall = metrics["targets"][t]["overall"]
    assert overall["nll"] == pytest.approx(mixture.nll(test.targets[t]), rel=1e-5)
    assert overall["nll"] != pytest.approx(Predictive(*mixture.moments()).nll(test.targets[t]), rel=1e-3)


def test_runs_that_do_not_fit_together(tmp_path, members, data_dir):
    other_targets = make_run(tmp_path / "other_targets", data_dir, targets=["lens_e1"])
    with pytest.raises(RunError, match=r"runs of different targets: .*other_targets predicts lens_e1, .*gauss0 predicts theta_e_arcsec, source_x_arcsec"):
        ensemble_runs([members[0], other_targets], tmp_path / "a")

    small_dir = write_dataset(tmp_path / "small_data", counts={"train": 4, "val": 2, "test": 2}, size=8)
    other_shape = make_run(tmp_path / "other_shape", small_dir, size=8)
    with pytest.raises(RunError, match=r"runs of different input shapes: .*other_shape takes images of \[8, 8, 1\]"):
        ensemble_runs([members[0], other_shape], tmp_path / "b")

    other_preset = make_run(tmp_path / "other_preset", data_dir, preset="deeplense-model-3")
    with pytest.raises(RunError, match="trained on different data: .*'deeplense-model-3'"):
        ensemble_runs([members[0], other_preset], tmp_path / "c")

    with pytest.raises(RunError, match="at least two runs"):
        ensemble_runs([members[0]], tmp_path / "d")
    with pytest.raises(RunError, match="given twice"):
        ensemble_runs([members[0], members[0]], tmp_path / "e")
    with pytest.raises(RunError, match="is one of the ensemble's runs"):
        ensemble_runs(members[:2], members[1])
    with pytest.raises(RunError, match="no such run folder"):
        ensemble_runs([members[0], tmp_path / "missing"], tmp_path / "f")

    ensemble_runs(members[:2], tmp_path / "g")
    with pytest.raises(RunError, match="holds a run; pass --overwrite"):
        ensemble_runs(members[:2], tmp_path / "g")
    assert Run.load(ensemble_runs(members, tmp_path / "g", overwrite=True).path).info["members"][2].endswith("point2")

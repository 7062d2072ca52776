"""The full-covariance head (`models/covariance.py`): its NLL against scipy, positive
definiteness under extreme inputs, the covariance's D4 transform, the covariance scale's
fit and application, and a tiny run through `train()`, evaluation and export."""

from __future__ import annotations

import contextlib
import io
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import TARGET_KINDS, write_dataset
from scipy import stats

from deeplense_tf.data import augment
from deeplense_tf.models import build_model
from deeplense_tf.models.covariance import (
    JOINT_OUTPUT,
    CholeskyGaussianOutput,
    JointGaussian,
    MultivariateGaussianNLL,
    apply_covariance_scale,
    cholesky_size,
    d4_target_matrix,
    fit_covariance_scale,
)

# The blob data's targets with a value in every example (the axion mass is NaN off-class).
TARGETS = ["theta_e_arcsec", "source_x_arcsec", "source_y_arcsec", "lens_e1", "lens_e2"]
SHAPE = (16, 16, 1)


def random_joint(rng, n, size):
    """A `[n, size, size+1]` joint output with a random lower-triangular positive factor."""
    factor = np.tril(rng.normal(0, 0.5, (n, size, size)))
    idx = np.arange(size)
    factor[:, idx, idx] = np.exp(rng.normal(0, 0.5, (n, size)))
    mean = rng.normal(size=(n, size))
    return np.concatenate([mean[..., None], factor], axis=-1)


def test_nll_matches_scipy_multivariate_normal():
    rng = np.random.default_rng(0)
    joint = random_joint(rng, 6, 4)
    y = rng.normal(size=(6, 4))
    loss = MultivariateGaussianNLL(["a", "b", "c", "d"], reduction=None)
    got = loss.call(tf.constant(y, tf.float32), tf.constant(joint, tf.float32)).numpy()
    dist = JointGaussian.from_joint_output(joint)
    expected = [-stats.multivariate_normal(dist.mean[i], dist.covariance[i]).logpdf(y[i]) for i in range(6)]
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    np.testing.assert_allclose(-dist.logpdf(y), expected, rtol=1e-9)
    # The truth as the pipeline's {target: [B, 1]} batch gives the same.
    as_dict = {t: tf.constant(y[:, [i]], tf.float32) for i, t in enumerate("abcd")}
    np.testing.assert_allclose(loss.call(as_dict, tf.constant(joint, tf.float32)).numpy(), got, rtol=1e-6)


@pytest.mark.parametrize("value", [0.0, 30.0, -30.0, 1e4, -1e4, 1e30, -1e30])
def test_factor_is_positive_definite_and_finite_for_extreme_inputs(value):
    size = 4
    layer = CholeskyGaussianOutput(size)
    raw = tf.fill([3, size + cholesky_size(size)], value)
    raw = tf.concat([raw[:1], -raw[1:2], raw[2:] * tf.linspace(-1.0, 1.0, size + cholesky_size(size))], 0)
    # Extreme covariance entries; the means (unbounded, as in the Gaussian head) stay 0.
    raw = tf.Variable(tf.concat([tf.zeros([3, size]), raw[:, size:]], axis=1))
    with tf.GradientTape() as tape:
        joint = layer(raw)
        y = tf.zeros([3, size])
        nll = MultivariateGaussianNLL(list("abcd"), reduction=None).call(y, joint)
        total = tf.reduce_sum(nll)
    grad = tape.gradient(total, raw)
    joint = joint.numpy()
    assert np.isfinite(joint).all() and np.isfinite(nll.numpy()).all() and np.isfinite(grad.numpy()).all()
    factor = joint[:, :, 1:].astype(np.float64)
    assert np.all(np.triu(factor, 1) == 0) and np.all(np.diagonal(factor, axis1=1, axis2=2) > 0)
    dist = JointGaussian.from_joint_output(joint)
    stds = dist.stds()
    assert stds.min() >= math.exp(-layer.limit / 2) * (1 - 1e-5)
    assert stds.max() <= math.exp(layer.limit / 2) * (1 + 1e-5)
    # Σ = S R S with S > 0: positive definite exactly when the correlation matrix R is.
    correlation = dist.correlation()
    assert np.abs(correlation[:, ~np.eye(size, dtype=bool)]).max() < 0.9989
    assert np.linalg.eigvalsh(correlation).min() > 1e-9
    np.linalg.cholesky(correlation)  # raises unless positive definite


def test_model_views_are_the_joint_marginals_and_the_scale_applies_exactly(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model("cnn", SHAPE, TARGETS, head="full_covariance", normalization="none",
                        width=4, blocks=2, convs_per_block=1)
    images = np.random.default_rng(0).gamma(2.0, 0.1, size=(5, *SHAPE)).astype(np.float32)
    out = model(images, training=False)
    assert out[JOINT_OUTPUT].shape == (5, len(TARGETS), len(TARGETS) + 1)
    dist = JointGaussian.from_joint_output(out[JOINT_OUTPUT].numpy())
    for i, t in enumerate(TARGETS):
        np.testing.assert_allclose(out[t].numpy()[:, 0], dist.mean[:, i], atol=1e-6)
        np.testing.assert_allclose(np.exp(out[t].numpy()[:, 1]), dist.covariance[:, i, i], rtol=1e-5)
    apply_covariance_scale(model, 2.5)
    path = tmp_path / "m.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    scaled = JointGaussian.from_joint_output(reloaded(images, training=False)[JOINT_OUTPUT].numpy())
    np.testing.assert_allclose(scaled.covariance, 2.5 * dist.covariance, rtol=1e-5)
    np.testing.assert_allclose(scaled.mean, dist.mean, atol=1e-6)


def test_compile_model_fits_with_the_joint_truth():
    """The notebooks' `model.fit` path: one loss on `posterior`, y = `{posterior: [B, T]}`."""
    from deeplense_tf.training import load_config
    from deeplense_tf.training.model_setup import compile_model

    model = build_model("cnn", SHAPE, TARGETS, head="full_covariance", normalization="none",
                        width=4, blocks=1, convs_per_block=1)
    compile_model(model, load_config(overrides={"model.head": "full_covariance"}), steps_per_epoch=2)
    rng = np.random.default_rng(3)
    images = rng.gamma(2.0, 0.1, size=(8, *SHAPE)).astype(np.float32)
    y = rng.normal(size=(8, len(TARGETS))).astype(np.float32)
    history = model.fit(images, {JOINT_OUTPUT: y}, epochs=1, verbose=0)
    expected = MultivariateGaussianNLL(TARGETS).call(tf.constant(y), model(images, training=False)[JOINT_OUTPUT])
    assert np.isfinite(history.history["loss"][0]) and np.isfinite(expected.numpy()).all()


def test_reserved_output_name():
    from deeplense_tf.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot name a layer"):
        build_model("cnn", SHAPE, [JOINT_OUTPUT], head="full_covariance", width=4, blocks=1)


def rotation_2theta(quarter_turns: int) -> np.ndarray:
    angle = 2 * quarter_turns * math.pi / 2  # spin 2: the pair turns by twice the angle
    return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


def test_covariance_rotates_with_the_spin2_and_vector_pairs_under_d4():
    rng = np.random.default_rng(1)
    dist = JointGaussian.from_joint_output(random_joint(rng, 1, len(TARGETS)))
    e = [TARGETS.index("lens_e1"), TARGETS.index("lens_e2")]
    v = [TARGETS.index("source_x_arcsec"), TARGETS.index("source_y_arcsec")]
    for k, element in enumerate(("identity", "rot90", "rot180", "rot270")):
        P = d4_target_matrix(element, TARGETS, TARGET_KINDS)
        moved = dist.transformed(P)
        R = rotation_2theta(k)
        # The ellipticity block: R(2θ) Σ R(2θ)ᵀ; the position block: R(θ) Σ R(θ)ᵀ.
        np.testing.assert_allclose(moved.covariance[0][np.ix_(e, e)],
                                   R @ dist.covariance[0][np.ix_(e, e)] @ R.T, atol=1e-12)
        Rv = np.array([[math.cos(k * math.pi / 2), -math.sin(k * math.pi / 2)],
                       [math.sin(k * math.pi / 2), math.cos(k * math.pi / 2)]])
        np.testing.assert_allclose(moved.covariance[0][np.ix_(v, v)],
                                   Rv @ dist.covariance[0][np.ix_(v, v)] @ Rv.T, atol=1e-12)
        np.testing.assert_allclose(moved.covariance[0][0, 0], dist.covariance[0][0, 0])  # theta_e: a scalar
    assert np.allclose(d4_target_matrix("rot90", TARGETS, TARGET_KINDS)[np.ix_(e, e)], -np.eye(2))
    # Every element: the covariance of labels moved by the augmentation's own transform.
    samples = rng.multivariate_normal(dist.mean[0], dist.covariance[0], size=20000)
    for element in augment.D4_ELEMENTS:
        moved_samples = augment.transform_targets({t: samples[:, i] for i, t in enumerate(TARGETS)},
                                                  element, TARGET_KINDS)
        empirical = np.cov(np.stack([moved_samples[t] for t in TARGETS]))
        P = d4_target_matrix(element, TARGETS, TARGET_KINDS)
        expected = P @ np.cov(samples.T) @ P.T
        np.testing.assert_allclose(empirical, expected, atol=1e-10)
        # and the inverse element maps the prediction back
        back = d4_target_matrix(augment.inverse(element), TARGETS, TARGET_KINDS)
        np.testing.assert_allclose(dist.transformed(P).transformed(back).covariance, dist.covariance, atol=1e-12)


def test_covariance_scale_recovers_a_known_inflation():
    rng = np.random.default_rng(2)
    n, size, true_scale = 4000, 5, 2.5
    dist = JointGaussian.from_joint_output(random_joint(rng, n, size))
    factor = np.linalg.cholesky(dist.covariance)
    y = dist.mean + math.sqrt(true_scale) * np.einsum("nij,nj->ni", factor, rng.normal(size=(n, size)))
    fit = fit_covariance_scale(y, dist)
    assert fit["scale"] == pytest.approx(true_scale, rel=0.08)
    assert fit["mean_d2_before"] / size == pytest.approx(true_scale, rel=0.05)
    assert fit["joint_coverage_68_before"] < 0.5
    assert fit["joint_coverage_68_after"] == pytest.approx(0.68, abs=0.02)
    assert fit["joint_coverage_95_after"] == pytest.approx(0.95, abs=0.02)
    calibrated = dist.with_scale(fit["scale"]).joint_coverage(y)
    np.testing.assert_allclose(calibrated, [0.68, 0.95], atol=0.02)
    # A calibrated model keeps (about) its scale.
    assert fit_covariance_scale(dist.mean + np.einsum("nij,nj->ni", factor, rng.normal(size=(n, size))),
                                dist)["scale"] == pytest.approx(1.0, rel=0.08)


# --- a tiny run through train(), evaluation and export ------------------------------------


@pytest.fixture(scope="module")
def fullcov_run(tmp_path_factory):
    from deeplense_tf.training import load_config, train

    data = write_dataset(tmp_path_factory.mktemp("data") / "blobs", counts={"train": 48, "val": 24, "test": 16})
    config = load_config(overrides={
        "data.path": str(data), "data.targets": TARGETS, "model.name": "cnn",
        "model.head": "full_covariance", "model.normalization": "none", "model.crop": None,
        "model.options": {"width": 4, "blocks": 2, "convs_per_block": 1},
        "training.epochs": 2, "training.batch_size": 8, "training.learning_rate": 3e-3,
        "training.bn_recalibration_batches": 2,
    })
    with contextlib.redirect_stdout(io.StringIO()):
        run = train(config, tmp_path_factory.mktemp("runs") / "fullcov", progress=False)
    return data, run


def test_train_calibrates_the_covariance_and_predicts_in_physical_units(fullcov_run):
    from deeplense_tf.runs import Run

    data, trained = fullcov_run
    run = Run.load(trained.path)
    assert run.head == "full_covariance" and run.targets == TARGETS
    fit = run.calibration["targets"][JOINT_OUTPUT]
    assert fit["examples"] == 24 and fit["scale"] > 0
    offset = float(run.model.get_layer(JOINT_OUTPUT).log_variance_offset.numpy())
    assert offset == pytest.approx(math.log(fit["scale"]), abs=1e-6)
    from deeplense_tf.data import load_examples

    examples = load_examples(data, split="test")
    per_target = run.predict(examples.images)
    joint = run.predict_joint(examples.images)
    assert joint.mean.shape == (16, 5) and joint.covariance.shape == (16, 5, 5)
    for i, t in enumerate(TARGETS):
        np.testing.assert_allclose(per_target[t]["mean"], joint.mean[:, i], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(per_target[t]["std"], joint.stds()[:, i], rtol=1e-5)
    # Physical units: the standardised output times the train split's std.
    raw = run.model(examples.images[:2], training=False)[JOINT_OUTPUT].numpy()
    std = np.array([run.target_stats[t]["std"] for t in TARGETS])
    np.testing.assert_allclose(joint.covariance[:2], JointGaussian.from_joint_output(raw).covariance
                               * std[:, None] * std[None, :], rtol=1e-5)


def test_export_names_the_joint_outputs_and_matches_keras(fullcov_run, tmp_path):
    import json

    from deeplense_tf.data import load_examples
    from deeplense_tf.export import exporter, savedmodel, tflite

    data, trained = fullcov_run
    with contextlib.redirect_stdout(io.StringIO()):
        paths = exporter.export_run(trained.path, tmp_path, tflite="fp32", progress=False, check_count=8)
    report = json.loads(paths["report"].read_text())
    outputs = report["signatures"]["serving_default"]["outputs"]
    assert outputs["covariance"] == [-1, 5, 5] and outputs["correlation"] == [-1, 5, 5]
    assert outputs["lens_e1_std"] == [-1]
    # The export's own parity check compared these outputs too; check them once more here.
    images = load_examples(data, split="test").images[:4]
    loaded = tf.saved_model.load(str(paths["saved_model"]))
    served = savedmodel.run_signature(loaded.signatures["serving_default"], images)
    joint = trained.predict_joint(images)
    np.testing.assert_allclose(served["covariance"], joint.covariance, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(served["correlation"], joint.correlation(), atol=1e-5)
    np.testing.assert_allclose(served["lens_e2_std"], joint.stds()[:, TARGETS.index("lens_e2")], rtol=1e-5)
    lite = tflite.run_tflite(paths["tflite_fp32"], images)
    np.testing.assert_allclose(lite["covariance"], joint.covariance, rtol=1e-3, atol=1e-7)
    # Serving: the local TF Serving-compatible servable answers predict with the matrices.
    from deeplense_tf.serving.json_answers import encode_predict_response
    from deeplense_tf.serving.servable import Servable

    servable = Servable("deeplense", 1, paths["saved_model"])
    try:
        answer = servable.run("serving_default", {"image": images})
    finally:
        servable.close()
    np.testing.assert_allclose(answer["covariance"], served["covariance"], rtol=1e-6)
    rows = json.loads(encode_predict_response(answer, "ROW"))["predictions"]
    assert len(rows) == 4 and np.asarray(rows[0]["correlation"]).shape == (5, 5)


def test_evaluation_reports_the_joint_calibration_and_a_corner_plot(fullcov_run, tmp_path):
    from deeplense_tf.data import load_examples
    from deeplense_tf.evaluation.report import evaluate_run, format_table, write_evaluation

    data, run = fullcov_run
    examples = load_examples(data, split="test")
    metrics, table = evaluate_run(run, examples)
    joint = metrics["joint"]
    assert joint["examples"] == 16 and joint["degrees_of_freedom"] == 5
    y = np.stack([examples.targets[t] for t in TARGETS], axis=1)
    dist = run.predict_joint(examples.images)
    d2 = dist.mahalanobis2(y)
    assert joint["coverage_68"] == pytest.approx(np.mean(d2 <= stats.chi2.ppf(0.68, 5)))
    assert joint["coverage_95"] == pytest.approx(np.mean(d2 <= stats.chi2.ppf(0.95, 5)))
    assert joint["corner"]["truth"] == pytest.approx(y[0].tolist())
    # Per-target metrics read the marginals, as for a Gaussian head.
    assert set(metrics["targets"]) == set(TARGETS)
    assert metrics["targets"]["lens_e1"]["overall"]["mae"] == pytest.approx(
        np.mean(np.abs(dist.mean[:, 3] - y[:, 3])), rel=1e-5)
    written = write_evaluation(metrics, table, tmp_path)
    assert (tmp_path / "plots" / "corner.png").stat().st_size > 1000
    assert tmp_path / "plots" / "corner.png" in written
    assert "Joint calibration over 5 targets" in format_table(metrics)
    # `deeplense predict` adds each pair's correlation.
    from deeplense_tf.evaluation.predict_cli import predict_inputs

    rows = predict_inputs(run, [str(data)], split="test")
    correlation = dist.correlation()
    assert [r["corr_lens_e1__lens_e2"] for r in rows] == pytest.approx(correlation[:, 3, 4].tolist(), abs=1e-6)
    assert sum(k.startswith("corr_") for k in rows[0]) == 10
    # TTA: the marginals are the exact 8-view mixtures; the joint says it is moment-matched.
    tta_metrics, _ = evaluate_run(run, examples, tta=True)
    assert "moment-matched" in tta_metrics["joint"]["distribution"]
    assert tta_metrics["distribution"]["lens_e1"]["components"] == 8


def test_calibrate_run_composes_and_refuses_what_is_not_built(fullcov_run, tmp_path):
    import shutil

    from deeplense_tf.errors import RunError
    from deeplense_tf.runs import Run
    from deeplense_tf.training.calibrate import calibrate_run
    from deeplense_tf.training.ensemble import check_members

    _, trained = fullcov_run
    copy = shutil.copytree(trained.path, tmp_path / "run")
    before = float(Run.load(copy).model.get_layer(JOINT_OUTPUT).log_variance_offset.numpy())
    with contextlib.redirect_stdout(io.StringIO()):
        fit = calibrate_run(copy, split="val")[JOINT_OUTPUT]
    after = Run.load(copy)
    offset = float(after.model.get_layer(JOINT_OUTPUT).log_variance_offset.numpy())
    assert offset == pytest.approx(before + math.log(fit["scale"]), abs=1e-6)
    assert after.calibration["targets"][JOINT_OUTPUT]["scale"] == fit["scale"]
    with pytest.raises(RunError, match="--tta is not supported"):
        calibrate_run(copy, split="val", tta=True, verbose=False)
    with pytest.raises(RunError, match="full_covariance run"):
        check_members([Run.load(trained.path), after])


def test_nine_varied_lens_targets_train_with_d4_and_stay_positive_definite(tmp_path):
    """The real preset: 9 targets (two spin-2 pairs, a vector pair), D4 augmentation."""
    from deeplense_tf.simulation.writer import write_dataset as simulate
    from deeplense_tf.training import load_config, train

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        simulate("varied-lens-64", 20, tmp_path / "varied", seed=1, workers=1, progress=False)
        config = load_config(overrides={
            "data.path": str(tmp_path / "varied"), "model.name": "cnn", "model.head": "full_covariance",
            "model.crop": None, "model.options": {"width": 4, "blocks": 2, "convs_per_block": 1},
            "training.epochs": 1, "training.batch_size": 8, "training.bn_recalibration_batches": 0,
            "data.augment": "d4",
        })
        run = train(config, tmp_path / "run", progress=False)
    assert len(run.targets) == 9 and {"shear_g1", "lens_e2", "source_y_arcsec"} <= set(run.targets)
    from deeplense_tf.data import load_examples

    examples = load_examples(tmp_path / "varied", split="test")
    joint = run.predict_joint(examples.images)
    assert joint.covariance.shape == (len(examples.images), 9, 9)
    assert np.linalg.eigvalsh(joint.correlation()).min() > 0
    # TTA: the eight views, each mapped back to the original frame (P Σ Pᵀ), and their mixture.
    mixed, views = run.predict_joint(examples.images, tta=True)
    assert len(views) == 8 and np.isfinite(mixed.covariance).all()

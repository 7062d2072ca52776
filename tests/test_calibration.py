"""Post-hoc variance calibration: the scale fit on synthetic residuals, the offset it
leaves in the Gaussian head (exact std scaling, surviving save/reload), and the errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deeplense_tf.errors import RunError
from deeplense_tf.models.calibration import apply_variance_scale, fit_variance_scale


@pytest.mark.parametrize("true_scale", [0.5, 1.0, 2.0])
def test_fit_recovers_the_std_scale(true_scale):
    rng = np.random.default_rng(0)
    n = 20000
    y_pred = rng.normal(size=n)
    y_std = rng.uniform(0.5, 2.0, size=n)
    y_true = y_pred + true_scale * y_std * rng.normal(size=n)
    fit = fit_variance_scale(y_true, y_pred, y_std)
    assert fit["scale"] == pytest.approx(true_scale, rel=0.03)
    assert fit["coverage_68_after"] == pytest.approx(0.68, abs=0.015)
    assert fit["calibration_error_after"] <= fit["calibration_error_before"]
    assert fit["examples"] == n


def test_fit_skips_undefined_examples_and_refuses_none():
    y_true = np.array([0.0, np.nan, 1.0, 2.0])
    y_pred = np.array([0.1, 0.0, np.inf, 2.2])
    y_std = np.array([0.1, 0.1, 0.1, 0.0])
    assert fit_variance_scale(y_true, y_pred, y_std)["examples"] == 1
    with pytest.raises(RunError, match="no example"):
        fit_variance_scale([np.nan], [0.0], [1.0])


def _tiny_model(head):
    from deeplense_tf.models import build_model

    return build_model("cnn", (16, 16, 1), ["a", "b"], head=head, normalization="none",
                       width=4, blocks=2, convs_per_block=1)


def test_apply_scales_only_the_std_and_survives_reload(tmp_path):
    import keras

    model = _tiny_model("gaussian")
    images = np.random.default_rng(1).uniform(size=(4, 16, 16, 1)).astype("float32")
    before = {k: np.asarray(v) for k, v in model(images).items()}
    apply_variance_scale(model, "a", 3.0)
    after = {k: np.asarray(v) for k, v in model(images).items()}
    np.testing.assert_allclose(after["a"][:, 0], before["a"][:, 0], rtol=0, atol=0)
    np.testing.assert_allclose(np.exp(0.5 * after["a"][:, 1]) / np.exp(0.5 * before["a"][:, 1]), 3.0, rtol=1e-5)
    np.testing.assert_array_equal(after["b"], before["b"])
    assert float(model.get_layer("a").log_variance_offset.numpy()) == pytest.approx(2 * math.log(3.0))
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(reloaded(images)["a"]), after["a"], rtol=1e-6, atol=1e-6)


def test_models_saved_without_the_offset_load_with_zero():
    model = _tiny_model("gaussian")
    layer = model.get_layer("a")
    layer.load_own_variables({})  # what a .keras file from before the offset holds
    assert float(layer.log_variance_offset.numpy()) == 0.0


def test_apply_refuses_a_point_head_and_a_bad_scale():
    with pytest.raises(RunError, match="SoftClipLogVariance"):
        apply_variance_scale(_tiny_model("point"), "a", 2.0)
    with pytest.raises(RunError, match="positive"):
        apply_variance_scale(_tiny_model("gaussian"), "a", 0.0)

"""Calibration of the deployed distribution: the scale fit on Student-t and TTA-mixture
predictions recovers the scale that makes them calibrated."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deeplense_tf.errors import RunError
from deeplense_tf.models.calibration import fit_predictive_scale, fit_variance_scale
from deeplense_tf.predictive import Predictive


@pytest.mark.parametrize("true_scale", [0.6, 1.7])
def test_student_t_scale_is_recovered(true_scale):
    rng = np.random.default_rng(3)
    n, df = 20000, 4.0
    std = rng.uniform(0.5, 2.0, n)
    # Errors follow the t whose std is true_scale * std; the model claims std.
    y = true_scale * std * math.sqrt((df - 2) / df) * rng.standard_t(df, n)
    fit = fit_predictive_scale(y, Predictive(np.zeros(n), std, np.full(n, df)))
    assert fit["scale"] == pytest.approx(true_scale, rel=0.03)
    assert fit["family"] == "student_t" and fit["components"] == 1
    assert fit["max_deviation_after"] < 0.02 < fit["max_deviation_before"]
    assert fit["coverage_95_after"] == pytest.approx(0.95, abs=0.01)


def test_mixture_scale_scales_components_not_their_spread():
    # Eight views: component means spread by +-0.5, each with std 0.5 s. The calibrated
    # scale multiplies component stds only, as the deployed offset does.
    rng = np.random.default_rng(4)
    n, k, true_scale = 6000, 8, 1.6
    offsets = rng.normal(0, 0.5, size=(k, n))
    pick = rng.integers(0, k, n)
    y = offsets[pick, np.arange(n)] + true_scale * 0.5 * rng.standard_normal(n)
    fit = fit_predictive_scale(y, Predictive(offsets, np.full((k, n), 0.5)))
    assert fit["scale"] == pytest.approx(true_scale, rel=0.05)
    assert fit["components"] == 8


def test_gaussian_case_agrees_with_fit_variance_scale_and_refuses_nothing_usable():
    rng = np.random.default_rng(5)
    n = 5000
    std = rng.uniform(0.5, 2.0, n)
    y = 1.3 * std * rng.standard_normal(n)
    a = fit_predictive_scale(y, Predictive(np.zeros(n), std))["scale"]
    b = fit_variance_scale(y, np.zeros(n), std)["scale"]
    assert a == pytest.approx(b, rel=0.01)
    with pytest.raises(RunError, match="no example"):
        fit_predictive_scale([np.nan], Predictive([0.0], [1.0]))

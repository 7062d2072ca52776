"""Evaluation metrics against scikit-learn, numpy and hand computations on fixed numbers."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import (
    mean_absolute_error,
    mean_squared_error,
    median_absolute_error,
    r2_score,
)

from deeplense_tf.evaluation import metrics as M

Y_TRUE = np.array([-23.9, -23.5, -23.1, -22.8, -22.4, -22.1, -23.3, -22.6])
Y_PRED = np.array([-23.7, -23.6, -23.0, -22.5, -22.6, -22.5, -23.3, -22.7])
Y_STD = np.array([0.1, 0.2, 0.05, 0.2, 0.3, 0.1, 0.4, 0.15])


def test_point_metrics_match_sklearn():
    got = M.point_metrics(Y_TRUE, Y_PRED)
    assert got["count"] == 8
    assert got["mae"] == pytest.approx(mean_absolute_error(Y_TRUE, Y_PRED), rel=1e-12)
    assert got["rmse"] == pytest.approx(math.sqrt(mean_squared_error(Y_TRUE, Y_PRED)), rel=1e-12)
    assert got["r2"] == pytest.approx(r2_score(Y_TRUE, Y_PRED), rel=1e-12)
    assert got["median_ae"] == pytest.approx(median_absolute_error(Y_TRUE, Y_PRED), rel=1e-12)
    # bias: predictions minus truth, by hand: (0.2 - 0.1 + 0.1 + 0.3 - 0.2 - 0.4 + 0 - 0.1) / 8
    assert got["bias"] == pytest.approx(-0.2 / 8, abs=1e-12)


def test_r2_undefined_for_constant_truth_and_empty_input():
    assert math.isnan(M.point_metrics([1.0, 1.0, 1.0], [1.0, 2.0, 0.5])["r2"])
    empty = M.point_metrics([], [])
    assert empty["count"] == 0 and math.isnan(empty["mae"])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="y_pred has 3"):
        M.point_metrics([1.0, 2.0], [1.0, 2.0, 3.0])


def test_coverage_by_hand():
    # |error| / std = [2, 0.5, 2, 1.5, 0.667, 4, 0, 0.667]; z68 = 0.994, z95 = 1.960
    assert M.z_for_level(0.68) == pytest.approx(0.99446, abs=1e-4)
    assert M.z_for_level(0.95) == pytest.approx(1.95996, abs=1e-4)
    assert M.coverage(Y_TRUE, Y_PRED, Y_STD, 0.68) == pytest.approx(4 / 8)
    assert M.coverage(Y_TRUE, Y_PRED, Y_STD, 0.95) == pytest.approx(5 / 8)
    with pytest.raises(ValueError):
        M.z_for_level(1.0)


def test_gaussian_nll_matches_scipy_logpdf():
    from scipy.stats import norm

    expected = -np.mean(norm.logpdf(Y_TRUE, loc=Y_PRED, scale=Y_STD))
    assert M.gaussian_nll(Y_TRUE, Y_PRED, Y_STD) == pytest.approx(expected, rel=1e-10)


def test_calibrated_gaussian_covers_its_nominal_levels():
    n = 20000
    rng = np.random.default_rng(1)
    mean = rng.uniform(-24, -22, n)
    std = rng.uniform(0.02, 0.3, n)
    truth = mean + std * rng.standard_normal(n)
    got = M.gaussian_metrics(truth, mean, std)
    tol = 4 * math.sqrt(0.25 / n)  # 4 binomial standard errors at worst (p = 0.5)
    assert got["coverage_68"] == pytest.approx(0.68, abs=tol)
    assert got["coverage_95"] == pytest.approx(0.95, abs=tol)
    curve = M.coverage_curve(truth, mean, std)
    assert np.allclose(curve["observed"], curve["expected"], atol=tol)
    # Over-confident predictions (std halved) fall below the diagonal everywhere.
    narrow = M.coverage_curve(truth, mean, std / 2)
    assert all(o < e for o, e in zip(narrow["observed"], narrow["expected"]))


def test_binned_metrics_split_the_true_range():
    truth = np.array([0.0, 0.1, 0.4, 0.6, 0.9, 1.0])
    pred = np.array([0.0, 0.3, 0.4, 0.5, 0.5, 0.5])
    rows = M.binned_metrics(truth, pred, bins=2)
    assert [(r["lo"], r["hi"]) for r in rows] == [(0.0, 0.5), (0.5, 1.0)]
    assert [r["count"] for r in rows] == [3, 3]  # 1.0 lands in the last, closed bin
    assert rows[0]["mae"] == pytest.approx(0.2 / 3)
    assert rows[1]["mae"] == pytest.approx((0.1 + 0.4 + 0.5) / 3)
    # Saturation shows: mean prediction stays at 0.5 while the truth climbs.
    assert rows[1]["mean_true"] == pytest.approx(2.5 / 3)
    assert rows[1]["mean_pred"] == pytest.approx(0.5)
    assert rows[1]["bias"] < -0.3 < rows[0]["bias"]


def test_binned_metrics_default_eight_bins_and_empty_bins():
    truth = np.array([0.0, 0.05, 7.9, 8.0])
    rows = M.binned_metrics(truth, truth + 1.0, np.ones(4))
    assert len(rows) == M.DEFAULT_BINS == 8
    assert [r["count"] for r in rows] == [2, 0, 0, 0, 0, 0, 0, 2]
    assert math.isnan(rows[3]["mae"]) and rows[0]["coverage_95"] == 1.0
    # A fixed range leaves values outside it out.
    ranged = M.binned_metrics(truth, truth, bins=2, value_range=(0.0, 4.0))
    assert sum(r["count"] for r in ranged) == 2


def test_evaluate_target_is_valid_json_with_nan_as_null():
    result = M.evaluate_target(Y_TRUE, Y_PRED, Y_STD, bins=20)
    text = json.dumps(M.to_jsonable(result), allow_nan=False)
    back = json.loads(text)
    assert back["overall"]["mae"] == pytest.approx(mean_absolute_error(Y_TRUE, Y_PRED))
    assert back["baseline_mae"] == pytest.approx(np.mean(np.abs(Y_TRUE - Y_TRUE.mean())))
    assert any(row["mae"] is None for row in back["binned"])  # empty bins
    assert len(back["calibration"]["expected"]) == len(back["calibration"]["observed"])
    point = M.evaluate_target(Y_TRUE, Y_PRED)
    assert point["calibration"] is None and "coverage_68" not in point["overall"]


def test_coverage_report_of_a_gaussian_equals_the_gaussian_formulas():
    from deeplense_tf.predictive import Predictive

    report = M.coverage_report(Y_TRUE, Predictive(Y_PRED, Y_STD))
    curve = M.coverage_curve(Y_TRUE, Y_PRED, Y_STD)
    assert report["expected"] == curve["expected"] and len(M.CURVE_LEVELS) == 19
    assert report["observed"] == pytest.approx(curve["observed"])
    assert report["coverage_68"] == pytest.approx(4 / 8) and report["coverage_95"] == pytest.approx(5 / 8)
    gaps = [abs(o - e) for o, e in zip(curve["observed"], curve["expected"]) if e <= 0.95]
    assert report["max_deviation"] == pytest.approx(max(gaps))


def test_heavy_tails_scored_by_their_own_distribution_and_per_bin():
    # Student-t (df 3) errors: the t predictive sits on the diagonal, the Gaussian with the
    # same std deviates (over-covers at 68%), and per-bin coverage is reported for both.
    from deeplense_tf.predictive import Predictive

    rng = np.random.default_rng(2)
    n, df = 30000, 3.0
    truth = rng.uniform(-24, -22, n)
    std = rng.uniform(0.05, 0.2, n)
    pred = truth + std * math.sqrt((df - 2) / df) * rng.standard_t(df, n)
    t = Predictive(pred, std, np.full(n, df))
    tol = 4 * math.sqrt(0.25 / n)
    got = M.evaluate_target(truth, pred, std, bins=4, predictive=t)
    assert got["calibration"]["max_deviation"] < 2 * tol
    assert got["overall"]["coverage_68"] == pytest.approx(0.68, abs=tol)
    assert got["overall"]["nll"] == pytest.approx(-np.mean(t.logpdf(truth)))
    gaussian = M.evaluate_target(truth, pred, std, bins=4)
    assert gaussian["calibration"]["max_deviation"] > 0.05
    assert gaussian["overall"]["coverage_68"] > 0.75
    for row in got["binned"]:
        assert row["coverage_95"] == pytest.approx(0.95, abs=4 * math.sqrt(0.05 * 0.95 / row["count"]))
        assert "max_coverage_deviation" in row

"""Population inference: the combination against analytic answers, and the predictive
distributions (Gaussian, Student-t, mixtures) it and the coverage metrics rely on."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from deeplense_tf.errors import DataError
from deeplense_tf.evaluation.population import (
    SimulatedLikelihood,
    SummaryLikelihood,
    calibration_masses,
    combine_posteriors,
    combine_summaries,
    summarise,
    systematic_floor,
    truncated_normal_moments,
    untruncate,
)
from deeplense_tf.predictive import Predictive


def test_gaussian_lenses_under_a_uniform_prior_give_the_analytic_product():
    # Product of N(m_i, s_i^2) is N(sum(m_i / s_i^2) / sum(1 / s_i^2), 1 / sum(1 / s_i^2));
    # well inside the prior range the truncation does not matter.
    rng = np.random.default_rng(1)
    means = rng.normal(-23.0, 0.1, size=40)
    stds = rng.uniform(0.08, 0.25, size=40)  # single lenses 4+ std from the range's edges
    posterior = combine_posteriors(Predictive(means, stds), (-24.0, -22.0), grid_size=4001,
                                   edge_correction=False)
    precision = np.sum(1.0 / stds**2)
    expected_mean = np.sum(means / stds**2) / precision
    expected_std = 1.0 / math.sqrt(precision)
    got = posterior.summary()
    assert got["mean"] == pytest.approx(expected_mean, abs=1e-5)
    assert got["std"] == pytest.approx(expected_std, rel=1e-3)
    assert got["map"] == pytest.approx(expected_mean, abs=1e-3)
    lo, hi = got["interval_95"]
    assert lo == pytest.approx(expected_mean - 1.95996 * expected_std, abs=2e-4)
    assert hi == pytest.approx(expected_mean + 1.95996 * expected_std, abs=2e-4)
    # Narrowing: the first n lenses, every row the analytic product of those n.
    for row in posterior.narrowing():
        n = row["n"]
        assert row["std"] == pytest.approx(1.0 / math.sqrt(np.sum(1.0 / stds[:n] ** 2)), rel=2e-3)
    assert [r["n"] for r in posterior.narrowing()] == [1, 2, 4, 8, 16, 32, 40]


def test_dividing_out_a_gaussian_training_prior():
    # Posterior N(m_i, s^2) under a prior N(0, tau^2): the likelihood is Gaussian with
    # precision 1/s^2 - 1/tau^2 and mean m_i (1/s^2) / (1/s^2 - 1/tau^2).
    tau, s = 1.0, 0.5
    means = np.array([0.3, 0.1, 0.45, 0.2])
    like_precision = 1 / s**2 - 1 / tau**2
    like_means = means / s**2 / like_precision
    expected_mean = like_means.mean()
    expected_std = 1.0 / math.sqrt(len(means) * like_precision)
    posterior = combine_posteriors(
        Predictive(means, np.full(4, s)), (-6.0, 6.0), grid_size=6001,
        log_train_prior=lambda g: -0.5 * (g / tau) ** 2,
    )
    got = posterior.summary()
    assert got["mean"] == pytest.approx(expected_mean, abs=1e-4)
    assert got["std"] == pytest.approx(expected_std, rel=1e-3)
    # Without the division the answer is visibly different (the prior counted 4 times).
    wrong = combine_posteriors(Predictive(means, np.full(4, s)), (-6.0, 6.0)).summary()
    assert abs(wrong["mean"] - expected_mean) > 0.05


def test_a_posterior_at_the_prior_edge_is_truncated_there():
    posterior = combine_posteriors(Predictive([-22.0], [0.3]), (-24.0, -22.0), edge_correction=False)
    got = posterior.summary()
    # Half-normal on the left of -22: mean -22 - s sqrt(2/pi).
    assert got["mean"] == pytest.approx(-22.0 - 0.3 * math.sqrt(2 / math.pi), abs=1e-3)
    assert got["interval_95"][1] <= -22.0


def test_truncated_normal_moments_and_their_inverse():
    rng = np.random.default_rng(2)
    a = rng.uniform(-24.6, -21.4, 4000)
    s = rng.uniform(0.02, 0.5, 4000)
    mean, var = truncated_normal_moments(a, s, -24.0, -22.0)
    ref_mean, ref_var = stats.truncnorm.stats((-24 - a[:40]) / s[:40], (-22 - a[:40]) / s[:40],
                                              loc=a[:40], scale=s[:40], moments="mv")
    np.testing.assert_allclose(mean[:40], ref_mean, rtol=1e-12)
    np.testing.assert_allclose(var[:40], ref_var, rtol=1e-9)
    a_back, s_back = untruncate(mean, np.sqrt(var), -24.0, -22.0)
    # Up to 12 stds outside the range the truncated moments still pin (a, s) down.
    ok = np.minimum(a - -24.0, -22.0 - a) / s > -12
    assert np.percentile(np.abs(a_back - a)[ok] / s[ok], 99) < 1e-6
    assert np.percentile(np.abs(s_back / s - 1)[ok], 99) < 1e-6


def test_edge_correction_removes_the_truncation_bias():
    # Every lens's likelihood is N(a_i, 0.1) around a shared value at the edge, -24; the
    # per-lens posterior (uniform prior) is that Gaussian truncated at -24, which an ML-
    # trained head reports as a Gaussian with the truncated mean and std. The corrected
    # product equals the product of the likelihoods truncated to the range; the plain
    # product is pulled inwards.
    rng = np.random.default_rng(3)
    n, s, truth = 50, 0.1, -24.0
    a = truth + s * rng.standard_normal(n)
    mean, var = truncated_normal_moments(a, np.full(n, s), -24.0, -22.0)
    reported = Predictive(mean, np.sqrt(var))
    expected_mean, _ = truncated_normal_moments(np.array([a.mean()]), np.array([s / math.sqrt(n)]), -24.0, -22.0)
    corrected = combine_posteriors(reported, (-24.0, -22.0), grid_size=8001).summary()
    plain = combine_posteriors(reported, (-24.0, -22.0), grid_size=8001, edge_correction=False).summary()
    assert corrected["mean"] == pytest.approx(float(expected_mean[0]), abs=2e-4)
    assert plain["mean"] - truth > 0.05 > corrected["mean"] - truth
    # Lenses far from the edges are left as they are.
    inner = Predictive([-23.0, -22.9], [0.05, 0.08])
    same = combine_posteriors(inner, (-24.0, -22.0)).summary()
    assert same == combine_posteriors(inner, (-24.0, -22.0), edge_correction=False).summary()


def test_bad_inputs_are_data_errors():
    with pytest.raises(DataError, match="lo < hi"):
        combine_posteriors(Predictive([0.0], [1.0]), (1.0, 1.0))
    with pytest.raises(DataError, match="no lens"):
        combine_posteriors(Predictive(np.zeros(0), np.zeros(0)), (0.0, 1.0))


def test_summarise_a_uniform_density():
    grid = np.linspace(0.0, 1.0, 1001)
    got = summarise(grid, np.zeros_like(grid))
    assert got["mean"] == pytest.approx(0.5)
    assert got["std"] == pytest.approx(1 / math.sqrt(12), rel=1e-4)
    assert got["interval_68"] == pytest.approx([0.16, 0.84], abs=1e-6)
    gaussian = summarise(grid, -0.5 * ((grid - 0.5) / 0.1) ** 2)
    assert gaussian["hdi_95"] == pytest.approx(gaussian["interval_95"], abs=2e-3)
    edge = summarise(grid, -grid / 0.1)  # exponential from the edge: the HDI starts there
    assert edge["hdi_68"][0] == 0.0 and edge["interval_68"][0] > 0.01


# --- the predictive distributions --------------------------------------------------------


def test_student_t_matches_scipy_with_the_std_as_given():
    mean, std, df = np.array([0.5, -1.0]), np.array([2.0, 0.3]), np.array([3.0, 12.0])
    pred = Predictive(mean, std, df)
    scale = std * np.sqrt((df - 2) / df)
    y = np.array([1.7, -0.2])
    assert pred.cdf(y) == pytest.approx(stats.t.cdf(y, df, loc=mean, scale=scale), rel=1e-10)
    assert pred.logpdf(y) == pytest.approx(stats.t.logpdf(y, df, loc=mean, scale=scale), rel=1e-10)
    assert stats.t.std(df, scale=scale) == pytest.approx(std)
    lo, hi = pred.interval(0.9)
    assert lo == pytest.approx(stats.t.ppf(0.05, df, loc=mean, scale=scale), abs=1e-8)
    assert hi == pytest.approx(stats.t.ppf(0.95, df, loc=mean, scale=scale), abs=1e-8)
    with pytest.raises(ValueError, match="df > 2"):
        Predictive([0.0], [1.0], [2.0])


def test_mixture_cdf_logpdf_moments_and_nan_components():
    means = np.array([[0.0, 1.0], [2.0, np.nan]])  # second example: one usable component
    stds = np.array([[1.0, 0.5], [0.5, 0.5]])
    pred = Predictive(means, stds)
    y = np.array([1.0, 1.0])
    expected_cdf = [0.5 * (stats.norm.cdf(1.0, 0, 1) + stats.norm.cdf(1.0, 2, 0.5)),
                    stats.norm.cdf(1.0, 1.0, 0.5)]
    assert pred.cdf(y) == pytest.approx(expected_cdf, rel=1e-10)
    expected_pdf = 0.5 * (stats.norm.pdf(1.0, 0, 1) + stats.norm.pdf(1.0, 2, 0.5))
    assert pred.logpdf(y)[0] == pytest.approx(math.log(expected_pdf), rel=1e-10)
    mean, std = pred.moments()
    assert mean == pytest.approx([1.0, 1.0])
    assert std[0] == pytest.approx(math.sqrt(0.5 * (1 + 0.25) + 1.0))
    assert std[1] == pytest.approx(0.5)


def test_coverage_of_draws_from_the_distribution_is_nominal():
    # Heavy-tailed draws: the t's own intervals cover at their rates, the Gaussian's with
    # the same std do not (too wide at 68%, too narrow at 99%).
    rng = np.random.default_rng(0)
    n, df = 40000, 3.0
    std = rng.uniform(0.5, 2.0, n)
    scale = std * math.sqrt((df - 2) / df)
    y = scale * rng.standard_t(df, n)
    levels = [0.68, 0.95, 0.99]
    t_cov = Predictive(np.zeros(n), std, np.full(n, df)).central_coverage(y, levels)
    assert t_cov == pytest.approx(levels, abs=0.01)
    g_cov = Predictive(np.zeros(n), std).central_coverage(y, levels)
    assert g_cov[0] > 0.75 and g_cov[2] < 0.98


def test_log_density_grid_equals_logpdf_point_by_point():
    grid = np.linspace(-1.0, 1.0, 7)
    for pred in (Predictive([[0.1, -0.3], [0.2, np.nan]], [[0.2, 0.5], [0.3, 0.1]]),
                 Predictive([0.1, -0.3], [0.2, 0.5], [3.0, 30.0])):
        got = pred.log_density_grid(grid)
        for j, value in enumerate(grid):
            np.testing.assert_allclose(got[:, j], pred.logpdf(np.full(2, value)), rtol=1e-12)


def test_a_shared_systematic_is_integrated_out_and_measured():
    # Product N(mu, 0.01) convolved with N(0, 0.03): std sqrt(0.01^2 + 0.03^2), same mean.
    means, stds = np.full(25, -23.0), np.full(25, 0.05)
    got = combine_posteriors(Predictive(means, stds), (-24.0, -22.0), grid_size=8001,
                             systematic_std=0.03).summary()
    assert got["mean"] == pytest.approx(-23.0, abs=1e-6)
    assert got["std"] == pytest.approx(math.hypot(0.01, 0.03), rel=2e-3)
    widths = [r["std"] for r in combine_posteriors(Predictive(means, stds), (-24.0, -22.0),
                                                   systematic_std=0.03).narrowing()]
    assert widths[-1] > 0.03 and widths[0] > widths[-1]
    # Floor: RMS of per-bin mean errors (+0.1 in one half of the range, -0.05 in the other).
    truth = np.linspace(-24, -22, 200)
    pred = truth + np.where(truth < -23, 0.1, -0.05)
    assert systematic_floor(truth, pred, bins=2) == pytest.approx(math.sqrt((0.01 + 0.0025) / 2))
    with pytest.raises(DataError, match="systematic"):
        combine_posteriors(Predictive(means, stds), (-24.0, -22.0), systematic_std=-1.0)


def test_summary_likelihood_goes_flat_where_the_model_saturates():
    # A model that cannot tell masses below -23.8 apart (it predicts -23.8 for all of
    # them) but reports a confident 0.05 dex: the product of its posteriors at a true -24
    # piles up at -23.8; the likelihood calibrated on labelled predictions is flat over
    # [-24, -23.8] and its 95% interval holds -24.
    rng = np.random.default_rng(6)

    def model(theta):
        return np.maximum(theta, -23.8) + 0.05 * rng.standard_normal(theta.size), np.full(theta.size, 0.05)

    val_truth = rng.uniform(-24, -22, 4000)
    val_mean, val_std = model(val_truth)
    likelihood = SummaryLikelihood.fit(val_truth, val_mean, val_std, (-24.0, -22.0))
    assert np.interp(-24.0, likelihood.grid, likelihood.bias) == pytest.approx(0.2, abs=0.03)
    assert np.interp(-23.0, likelihood.grid, likelihood.bias) == pytest.approx(0.0, abs=0.01)
    assert np.interp(-23.0, likelihood.grid, likelihood.spread) == pytest.approx(1.0, abs=0.1)
    # Standard error of b: 0.05 / sqrt(effective count), ~2000/dex x 0.08 x 2 sqrt(pi) = 570.
    assert np.interp(-23.0, likelihood.grid, likelihood.bias_error) == pytest.approx(0.05 / math.sqrt(570), rel=0.3)

    mean, std = model(np.full(50, -24.0))
    lenses = Predictive(mean, std)
    calibrated = combine_summaries(lenses, likelihood, (-24.0, -22.0)).summary()
    product = combine_posteriors(lenses, (-24.0, -22.0)).summary()
    # Equal-tailed intervals never reach the edge; the highest-density one does.
    # (the kernel fit rounds the kink at -23.8, so the likelihood is flat only up to ~-23.95)
    assert calibrated["hdi_95"][0] < -23.95 and calibrated["interval_95"][1] < -23.7
    assert product["hdi_95"][0] > -23.85 and product["mean"] > -23.82
    # In the middle the calibrated likelihood is as sharp as the product and unbiased.
    mean, std = model(np.full(50, -23.0))
    middle = combine_summaries(Predictive(mean, std), likelihood, (-24.0, -22.0)).summary()
    assert middle["mean"] == pytest.approx(-23.0, abs=0.03)
    floor = float(np.interp(-23.0, likelihood.grid, likelihood.bias_error))
    assert middle["std"] == pytest.approx(math.hypot(0.05 / math.sqrt(50), floor), rel=0.2)
    no_floor = combine_summaries(Predictive(mean, std), likelihood, (-24.0, -22.0), systematic_std=0.0)
    assert no_floor.summary()["std"] < middle["std"]


def _saturating_model(rng, theta):
    """A toy network: its prediction bends at -23.8 (slope 0.4 below, as the light-end
    saturation does) and is flat above -22.3 (the heavy end), with per-lens stds between
    0.08 and 0.12 and errors of 0.6 x std, Student-t with 5 df, plus one lens in a hundred
    far off."""
    theta = np.asarray(theta, np.float64)
    centre = np.where(theta < -23.8, -23.8 + 0.4 * (theta + 23.8), np.minimum(theta, -22.3))
    std = rng.uniform(0.08, 0.12, theta.size)
    noise = rng.standard_t(5, theta.size) * math.sqrt(3.0 / 5.0)
    mean = centre + 0.6 * std * noise
    wild = rng.random(theta.size) < 0.01
    mean[wild] = rng.uniform(-24.5, -21.5, int(wild.sum()))
    return mean, std


def test_calibration_masses_hold_and_bracket_both_edges():
    masses = calibration_masses((-24.0, -22.0))
    assert masses[0] == pytest.approx(-24.2) and masses[-1] == pytest.approx(-21.8)
    assert np.any(np.isclose(masses, -24.0)) and np.any(np.isclose(masses, -22.0))
    assert np.allclose(np.diff(masses), 0.04)
    with pytest.raises(DataError, match="calibration grid"):
        calibration_masses((-22.0, -24.0))


def test_simulated_likelihood_holds_at_the_edge_of_the_prior():
    """Fitted on lenses at fixed masses that bracket the edges, the likelihood follows the
    bend of the toy network: sets of 50 lenses at the prior's edge (-24) and next to it
    (-23.9) are covered at about their rates, where the product of the posteriors misses;
    where the network is flat the likelihood is flat too."""
    rng = np.random.default_rng(16)
    masses = calibration_masses((-24.0, -22.0), step=0.1)
    truth = np.repeat(masses, 600)
    mean, std = _saturating_model(rng, truth)
    likelihood = SimulatedLikelihood.fit(truth, mean, std)
    assert likelihood.masses.size == masses.size
    k = int(np.argmin(np.abs(likelihood.masses + 23.0)))
    assert likelihood.location[k] == pytest.approx(-23.0, abs=0.01)
    assert math.exp(likelihood.log_spread[k]) == pytest.approx(0.6, rel=0.1)

    for shared, levels in ((-24.0, "hdi"), (-23.9, "interval")):
        hits = {68: 0, 95: 0}
        errors = []
        for _ in range(120):
            lenses = Predictive(*_saturating_model(rng, np.full(50, shared)))
            got = combine_summaries(lenses, likelihood, (-24.0, -22.0), systematic_std=0.0).summary()
            for level in hits:
                lo, hi = got[f"{levels}_{level}"]
                hits[level] += lo <= shared <= hi
            errors.append(got["map"] - shared)
        # 120 sets: binomial standard error 0.043 at 68%, 0.020 at 95%. At the very edge the
        # highest-density interval over-covers a little (a one-sided posterior), never under.
        assert 0.60 <= hits[68] / 120 <= 0.85, (shared, hits)
        assert 0.90 <= hits[95] / 120 <= 1.0, (shared, hits)
        assert abs(np.median(errors)) < 0.02, shared
    # The product of the toy's posteriors piles up on its bent prediction (-23.84 at -23.9).
    product = combine_posteriors(lenses, (-24.0, -22.0), edge_correction=False).summary()
    assert not product["interval_95"][0] <= -23.9 <= product["interval_95"][1]

    # Above -22.3 the toy network is flat: so is the likelihood, and the posterior of a set
    # at -22.0 spreads over the masses it cannot tell apart.
    lenses = Predictive(*_saturating_model(rng, np.full(50, -22.0)))
    flat = combine_summaries(lenses, likelihood, (-24.0, -22.0), systematic_std=0.0).summary()
    assert flat["std"] > 0.05 and flat["hdi_95"][1] == pytest.approx(-22.0, abs=1e-3)


def test_simulated_likelihood_needs_fixed_masses():
    rng = np.random.default_rng(3)
    truth = rng.uniform(-24, -22, 2000)
    with pytest.raises(DataError, match="three or more fixed masses"):
        SimulatedLikelihood.fit(truth, truth, np.full(truth.size, 0.1))

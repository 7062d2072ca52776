"""`deeplense_tf.units`: the one conversion between axion masses in eV and the target
`log10_m_axion_ev` (the DeepLense reader and the simulator both use it)."""

import math

import numpy as np

from deeplense_tf.units import axion_mass_ev, log10_axion_mass_ev


def test_round_trip_and_nan():
    masses = np.array([1e-24, 3.2e-23, 1e-22, np.nan])
    logs = log10_axion_mass_ev(masses)
    np.testing.assert_allclose(logs[:3], [-24.0, math.log10(3.2e-23), -22.0], rtol=0, atol=1e-12)
    assert np.isnan(logs[3])
    np.testing.assert_allclose(axion_mass_ev(logs[:3]), masses[:3], rtol=1e-12)


def test_one_value_is_a_float_computed_as_the_simulator_always_did():
    for value in np.random.default_rng(0).uniform(-24.0, -22.0, 200):
        got = axion_mass_ev(float(value))
        assert isinstance(got, float) and got == 10.0 ** float(value)

"""Unit conversions between a physical quantity and the target that names its units.

A target carries its units in its name: `log10_m_axion_ev` is log10(m_axion / eV), in
dex. DeepLense `.npy` files label images with the mass itself (eV), and the axion vortex
length is a formula in the mass, so the two forms meet in the readers and the simulator;
this is the one place that converts between them. The lowest layer (numpy only).
"""

from __future__ import annotations

import numpy as np


def log10_axion_mass_ev(mass_ev):
    """log10(m / eV) of axion masses `mass_ev` in eV (NaN stays NaN): the target's units."""
    return np.log10(np.asarray(mass_ev, dtype=np.float64))


def axion_mass_ev(log10_m_axion_ev):
    """Axion masses in eV from the target `log10_m_axion_ev` (the inverse of the above);
    a float for one value, an array for an array."""
    if np.ndim(log10_m_axion_ev) == 0:
        # Python's pow, which the simulator has always used: numpy's differs in the last
        # bit for some values, and simulated images are a pure function of their seed.
        return 10.0 ** float(log10_m_axion_ev)
    return np.power(10.0, np.asarray(log10_m_axion_ev, dtype=np.float64))

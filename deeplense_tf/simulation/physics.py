"""Lensing physics of the DeepLense simulations: Einstein radii, substructure, axion vortices.

Pure numpy functions (plus cached astropy distances); no lenstronomy here, so each piece
can be checked on its own. Angles are in arcsec, masses in solar masses (M_sun), axion
masses in eV, redshifts dimensionless.
"""

from __future__ import annotations

import functools

import numpy as np

# DeepLenseSim converts radians with this rounded constant (206264.806... exactly).
RAD_TO_ARCSEC_DEEPLENSE = 206265.0

# Cosmology the DeepLense files used for Einstein radii (astropy FlatLambdaCDM).
DEEPLENSE_COSMOLOGY = {"H0": 70.0, "Om0": 0.3, "Ob0": 0.05}
# pyHalo's default (Planck 2018) cosmology, which DeepLenseSim handed to lenstronomy's
# multi-plane ray tracing for Models II and III.
PYHALO_COSMOLOGY = {"H0": 67.5, "Om0": 0.309, "Ob0": 0.049}
# DeepLenseSim's SimAPI `z_source_convention`: lenstronomy reads every deflection as
# reduced to a source at this redshift, not at the real source redshift.
DEEPLENSE_Z_SOURCE_CONVENTION = 2.5

Z_LENS = 0.5
Z_SOURCE = 1.0

# Axion vortex: half-length L = 0.03 arcsec * (1e-22 eV / m) (DeepLenseSim's
# `axion_mass_to_length`, valid for a halo at z = 0.5).
VORTEX_LENGTH_AT_1E22_ARCSEC = 0.03


@functools.cache
def _astropy_cosmology(h0: float, om0: float, ob0: float):
    from astropy.cosmology import FlatLambdaCDM

    return FlatLambdaCDM(H0=h0, Om0=om0, Ob0=ob0)


def cosmology(params: dict):
    """An astropy FlatLambdaCDM for a dict with keys H0, Om0, Ob0 (cached)."""
    return _astropy_cosmology(float(params["H0"]), float(params["Om0"]), float(params["Ob0"]))


@functools.cache
def _einstein_radius_per_sqrt_msun(distances: str, z_lens: float, z_source: float,
                                   h0: float, om0: float, ob0: float) -> float:
    import astropy.units as u
    from astropy.constants import G, M_sun, c

    cosmo = _astropy_cosmology(h0, om0, ob0)
    if distances == "luminosity":
        # DeepLenseSim's formula: luminosity distances and D_LS = D_S - D_L.
        d_l = cosmo.luminosity_distance(z_lens).to(u.m)
        d_s = cosmo.luminosity_distance(z_source).to(u.m)
        d_ls = d_s - d_l
        rad_to_arcsec = RAD_TO_ARCSEC_DEEPLENSE
    elif distances == "angular":
        d_l = cosmo.angular_diameter_distance(z_lens).to(u.m)
        d_s = cosmo.angular_diameter_distance(z_source).to(u.m)
        d_ls = cosmo.angular_diameter_distance(z_lens, z_source).to(u.m)
        rad_to_arcsec = float((1 * u.rad).to(u.arcsec).value)
    else:
        raise ValueError(f"distances must be 'luminosity' or 'angular', got {distances!r}")
    theta = np.sqrt(4 * G * M_sun / c**2 * d_ls / (d_l * d_s))
    return float(theta.decompose().value) * rad_to_arcsec


def point_mass_einstein_radius(mass_msun, *, distances: str = "luminosity",
                               cosmo: dict = DEEPLENSE_COSMOLOGY,
                               z_lens: float = Z_LENS, z_source: float = Z_SOURCE):
    """Einstein radius in arcsec of a point mass, theta_E = sqrt(4 G M / c^2 * D_LS / (D_L D_S)).

    `distances="luminosity"` reproduces DeepLenseSim (luminosity distances, D_LS = D_S - D_L,
    206265 arcsec per radian): 1.2815 arcsec for 1e12 M_sun at z = 0.5 -> 1.0.
    `distances="angular"` is the textbook formula with angular-diameter distances.
    """
    k = _einstein_radius_per_sqrt_msun(distances, float(z_lens), float(z_source),
                                       float(cosmo["H0"]), float(cosmo["Om0"]), float(cosmo["Ob0"]))
    return k * np.sqrt(mass_msun)


@functools.cache
def multiplane_deflection_scale(z_lens: float = Z_LENS, z_source: float = Z_SOURCE,
                                z_source_convention: float = DEEPLENSE_Z_SOURCE_CONVENTION,
                                h0: float = PYHALO_COSMOLOGY["H0"],
                                om0: float = PYHALO_COSMOLOGY["Om0"],
                                ob0: float = PYHALO_COSMOLOGY["Ob0"]) -> float:
    """Factor by which lenstronomy's multi-plane mode scales every deflection of one lens plane.

    Deflections given as "reduced to z_source_convention" reach a source at `z_source` scaled
    by (D_ls/D_s)(z_source) / (D_ls/D_s)(z_source_convention). For DeepLenseSim's settings
    (0.5, 1.0, 2.5, pyHalo cosmology) this is 0.6335: the Model II/III ring shrinks from
    1.28 to 0.81 arcsec.
    """
    cosmo = _astropy_cosmology(h0, om0, ob0)

    def reduced(z):
        return float(cosmo.angular_diameter_distance(z_lens, z).value
                     / cosmo.angular_diameter_distance(z).value)

    return reduced(z_source) / reduced(z_source_convention)


def vortex_half_length_arcsec(axion_mass_ev):
    """Half-length of the axion vortex in arcsec: 0.03 * (1e-22 eV / m)."""
    return VORTEX_LENGTH_AT_1E22_ARCSEC * (1e-22 / np.asarray(axion_mass_ev, dtype=float))


def vortex_positions(half_length_arcsec: float, angle_rad: float, n_points: int = 100):
    """(x, y) in arcsec of `n_points` equal point masses evenly spaced on a line through the
    origin, from -L to +L along the direction `angle_rad` (counter-clockwise from +x)."""
    s = np.linspace(-half_length_arcsec, half_length_arcsec, n_points)
    return s * np.cos(angle_rad), s * np.sin(angle_rad)


def draw_power_law_masses(rng: np.random.Generator, n: int, m_min: float = 1e6,
                          m_max: float = 1e10, slope: float = -0.9) -> np.ndarray:
    """`n` masses in M_sun from pdf(m) ∝ m**slope on [m_min, m_max] (inverse CDF, slope != -1)."""
    u = rng.uniform(0.0, 1.0, size=n)
    a, b = m_min ** (slope + 1.0), m_max ** (slope + 1.0)
    return (a + (b - a) * u) ** (1.0 / (slope + 1.0))


def draw_subhalo_positions(rng: np.random.Generator, n: int, r_min: float = 0.25,
                           r_max: float = 2.0):
    """(x, y) in arcsec: radius U(r_min, r_max), angle U(0, 2 pi), as in DeepLenseSim
    (x = r sin(angle), y = r cos(angle)); not uniform in area, on purpose."""
    r = rng.uniform(r_min, r_max, size=n)
    angle = rng.uniform(0.0, 2.0 * np.pi, size=n)
    return r * np.sin(angle), r * np.cos(angle)

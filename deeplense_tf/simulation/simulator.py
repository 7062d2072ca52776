"""Draw parameters, render images with lenstronomy, assemble examples.

Pixel grid (every preset): `image[row, col]` with col <-> +x and row <-> +y in arcsec, both
increasing with the index, centred on the lens (lenstronomy's grid with `inverse=False`):
pixel (row, col) sits at x = (col - (N-1)/2) * pixel_scale, y = (row - (N-1)/2) * pixel_scale.
Row 0 is the bottom (most negative y); show images with `imshow(origin="lower")`.

An example is a pure function of (preset, seed, index): its random numbers come from
`numpy.random.SeedSequence([seed, index])`, spawned into one stream for the parameters and
one for the noise, so the same parameters can be re-rendered with or without noise.
lenstronomy objects are built once per (instrument, number of point masses) and process.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from deeplense_tf.data.schema import CLASS_NAMES
from deeplense_tf.simulation import physics
from deeplense_tf.simulation.presets import AXION_TARGET, Instrument, Preset, get_preset
from deeplense_tf.units import axion_mass_ev

# Lenstronomy numerics: DeepLenseSim passed {'point_source_supersampling_factor': 1} (Models
# II, III) or {'supersampling_factor': 1, ...} (Model I); both mean no supersampling.
_KWARGS_NUMERICS = {"supersampling_factor": 1, "supersampling_convolution": False}


# --- cached lenstronomy objects ------------------------------------------------------------


@functools.cache
def _data_and_psf(instrument: Instrument):
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.Util import util

    if instrument.band:
        from lenstronomy.SimulationAPI.data_api import DataAPI

        data_api = DataAPI(instrument.num_pix, **instrument.band_kwargs)
        return data_api.data_class, data_api.psf_class
    _, _, ra0, dec0, _, _, pix2angle, _ = util.make_grid_with_coordtransform(
        num_pix=instrument.num_pix, delta_pix=instrument.pixel_scale_arcsec,
        center_ra=0, center_dec=0, subgrid_res=1, inverse=False,
    )
    data = ImageData(
        image_data=np.zeros((instrument.num_pix, instrument.num_pix)),
        ra_at_xy_0=ra0, dec_at_xy_0=dec0, transform_pix2angle=pix2angle,
        background_rms=instrument.background_rms, exposure_time=1.0,
    )
    psf = PSF(psf_type="GAUSSIAN", fwhm=instrument.psf_fwhm_arcsec,
              pixel_size=instrument.pixel_scale_arcsec, truncation=instrument.psf_truncation)
    return data, psf


def lens_model_list(n_point_masses: int) -> list[str]:
    """The lenstronomy lens models of every preset: SIE + external shear + point masses."""
    return ["SIE", "SHEAR"] + ["POINT_MASS"] * int(n_point_masses)


@functools.lru_cache(maxsize=32)
def image_model(instrument: Instrument, n_point_masses: int):
    """The lenstronomy `ImageModel` for `instrument` and SIE + SHEAR + n point masses (cached)."""
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    data, psf = _data_and_psf(instrument)
    return ImageModel(
        data, psf,
        lens_model_class=LensModel(lens_model_list(n_point_masses)),
        source_model_class=LightModel(["SERSIC_ELLIPSE"]),
        kwargs_numerics=dict(_KWARGS_NUMERICS),
    )


@functools.cache
def single_band(instrument: Instrument):
    """lenstronomy `SingleBand` of the instrument: zero point and noise model (cached)."""
    from lenstronomy.SimulationAPI.observation_api import SingleBand

    return SingleBand(**instrument.band_kwargs)


@functools.lru_cache(maxsize=1)
def _sersic_model():
    from lenstronomy.LightModel.light_model import LightModel

    return LightModel(["SERSIC_ELLIPSE"])


@functools.lru_cache(maxsize=256)
def _sersic_unit_flux(r_sersic: float, n_sersic: float, e1: float, e2: float) -> float:
    kwargs = {"R_sersic": r_sersic, "n_sersic": n_sersic, "e1": e1, "e2": e2,
              "center_x": 0.0, "center_y": 0.0}
    return float(_sersic_model().total_flux([kwargs], norm=True)[0])


# --- parameters -----------------------------------------------------------------------------


def _draw(rng: np.random.Generator, prior: tuple) -> float:
    kind = prior[0]
    if kind == "fixed":
        return float(prior[1])
    if kind == "uniform":
        return float(rng.uniform(prior[1], prior[2]))
    if kind == "log10_uniform":
        return float(10.0 ** rng.uniform(prior[1], prior[2]))
    raise ValueError(f"unknown prior {prior!r}")


def fixed_params(preset: Preset) -> dict:
    """The preset's fixed macro values (defaults for `render_image`)."""
    return {name: float(prior[1]) for name, prior in preset.macro if prior[0] == "fixed"}


def class_of_index(preset: Preset, index: int) -> str:
    """Classes cycle with the index, so every split holds them in equal shares."""
    return preset.classes[int(index) % len(preset.classes)]


def draw_params(preset: Preset, rng: np.random.Generator, class_name: str) -> dict:
    """Draw every parameter of one example: the preset's macro priors in order, then the
    class's substructure. Returns floats, plus arrays `subhalo_x_arcsec`, `subhalo_y_arcsec`,
    `subhalo_mass_msun` for `cdm`."""
    if class_name not in CLASS_NAMES:
        raise ValueError(f"unknown class {class_name!r}")
    params: dict = {"class": class_name}
    for name, prior in preset.macro:
        params[name] = _draw(rng, prior)
    if class_name == "cdm":
        params["subhalo_mass_msun"] = physics.draw_power_law_masses(
            rng, preset.cdm_count, *preset.cdm_mass_range_msun, slope=preset.cdm_mass_slope)
        x, y = physics.draw_subhalo_positions(rng, preset.cdm_count,
                                              *preset.cdm_radius_range_arcsec)
        params["subhalo_x_arcsec"], params["subhalo_y_arcsec"] = x, y
    elif class_name == "axion":
        log10_m = float(rng.uniform(*preset.log10_m_axion_range_ev))
        params[AXION_TARGET] = log10_m
        params["vortex_half_length_arcsec"] = float(physics.vortex_half_length_arcsec(axion_mass_ev(log10_m)))
        params["vortex_angle_rad"] = float(rng.uniform(0.0, 2.0 * np.pi))
    return params


# --- lenstronomy inputs ------------------------------------------------------------------------


def _point_mass_theta_e(preset: Preset, mass_msun):
    return physics.point_mass_einstein_radius(mass_msun, distances=preset.einstein_distances)


def lenstronomy_inputs(preset: Preset, params: dict):
    """(image_model, kwargs_lens, kwargs_source) that render `params` (noise-free, flux/s).

    Missing macro values fall back to the preset's fixed ones. `deflection_scale` f
    multiplies every deflection: SIE theta_E and shear by f, point-mass theta_E by sqrt(f)
    (its deflection goes as theta_E**2) -- identical to lenstronomy's multi-plane mode for
    one lens plane, which is how DeepLenseSim shrank Models II and III (see physics).
    """
    p = {**fixed_params(preset), **params}
    f = preset.deflection_scale
    kwargs_lens = [
        {"theta_E": p["theta_e_arcsec"] * f, "e1": p["lens_e1"], "e2": p["lens_e2"],
         "center_x": 0.0, "center_y": 0.0},
        {"gamma1": p["shear_g1"] * f, "gamma2": p["shear_g2"] * f, "ra_0": 0.0, "dec_0": 0.0},
    ]
    class_name = p.get("class", "no_sub")
    if class_name == "cdm":
        theta = _point_mass_theta_e(preset, np.asarray(p["subhalo_mass_msun"])) * math.sqrt(f)
        for t, x, y in zip(theta, p["subhalo_x_arcsec"], p["subhalo_y_arcsec"]):
            kwargs_lens.append({"theta_E": float(t), "center_x": float(x), "center_y": float(y)})
    elif class_name == "axion":
        half_length = p.get("vortex_half_length_arcsec")
        if half_length is None:
            half_length = float(physics.vortex_half_length_arcsec(axion_mass_ev(p[AXION_TARGET])))
        n = preset.vortex_points
        theta = float(_point_mass_theta_e(preset, preset.vortex_mass_msun / n)) * math.sqrt(f)
        xs, ys = physics.vortex_positions(half_length, p["vortex_angle_rad"], n)
        for x, y in zip(xs, ys):
            kwargs_lens.append({"theta_E": theta, "center_x": float(x), "center_y": float(y)})

    source = {"R_sersic": p["source_r_arcsec"], "n_sersic": p["source_n_sersic"],
              "e1": p["source_e1"], "e2": p["source_e2"],
              "center_x": p["source_x_arcsec"], "center_y": p["source_y_arcsec"]}
    if "source_amp" in p:
        source["amp"] = p["source_amp"]
    else:
        # lenstronomy's SimAPI.magnitude2amplitude: counts/s of the magnitude over unit flux.
        cps = single_band(preset.instrument).magnitude2cps(p["source_magnitude"])
        source["amp"] = cps / _sersic_unit_flux(p["source_r_arcsec"], p["source_n_sersic"],
                                                p["source_e1"], p["source_e2"])
    model = image_model(preset.instrument, len(kwargs_lens) - 2)
    return model, kwargs_lens, [source]


def render_model(preset: Preset, params: dict) -> np.ndarray:
    """The noise-free lenstronomy model image [H, W] (float64, flux per second)."""
    model, kwargs_lens, kwargs_source = lenstronomy_inputs(preset, params)
    return model.image(kwargs_lens, kwargs_source)


def render_image(preset: Preset | str, params: dict, rng: np.random.Generator | None = None) -> np.ndarray:
    """Render explicit parameters to a float32 image [H, W, 1] in the instrument's units.

    `params`: as from `draw_params` (class, source_x/y_arcsec, theta_e_arcsec, lens_e1/e2,
    shear_g1/g2, vortex_angle_rad, vortex_half_length_arcsec or log10_m_axion_ev, subhalo
    arrays, exposure_s for Model I ...); missing macro values take the preset's fixed ones.
    With `rng=None` the image is noise-free: exposure_s * model (Model I, expected photon
    counts without background), 2 * model (Models II/III as published) or model (noisy
    and clean presets). With an `rng`, the preset's noise is drawn from it.
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
    model = render_model(preset, params)
    mode = preset.image_mode
    if mode == "doubled":
        image = model + model  # DeepLenseSim's `image_model + image_model`; noise discarded
    elif mode == "poisson_counts":
        exposure = float({**fixed_params(preset), **params}["exposure_s"])
        if rng is None:
            image = exposure * model
        else:
            # DeepLenseSim Model I: lenstronomy's add_poisson / add_background, then a Poisson
            # draw of the (clipped) expected counts.
            poisson = rng.standard_normal(model.shape) * np.sqrt(np.abs(model) / exposure)
            background = rng.standard_normal(model.shape) * preset.instrument.background_rms
            expected = exposure * (model + poisson + background)
            image = rng.poisson(np.clip(expected, 0.0, None)).astype(np.float64)
    elif mode == "noisy":
        image = model
        if rng is not None:
            band = single_band(preset.instrument)
            image = (model + rng.standard_normal(model.shape) * band.background_noise
                     + rng.standard_normal(model.shape) * band.flux_noise(model))
    elif mode == "clean":
        image = model  # the noise-free twin: `rng` draws nothing
    else:
        raise ValueError(f"unknown image mode {mode!r}")
    return np.asarray(image, dtype=np.float32)[:, :, None]


# --- examples ------------------------------------------------------------------------------


def example_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent (parameter, noise) generators of example `index` of `seed`."""
    params_seq, noise_seq = np.random.SeedSequence([int(seed), int(index)]).spawn(2)
    return np.random.default_rng(params_seq), np.random.default_rng(noise_seq)


def source_twin_rngs(seed: int, index: int, source_seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent (source, noise) generators of example `index`'s source twin `source_seed`.

    The entropy `[seed, index, source_seed + 1]` differs from `example_rngs`' (a third entry
    never 0, so no source seed repeats the example's own streams).
    """
    source_seq, noise_seq = np.random.SeedSequence(
        [int(seed), int(index), int(source_seed) + 1]).spawn(2)
    return np.random.default_rng(source_seq), np.random.default_rng(noise_seq)


def redraw_source(preset: Preset, params: dict, rng: np.random.Generator) -> dict:
    """`params` with every source parameter drawn again from its prior, in the preset's order."""
    priors = preset.macro_priors
    return {**params, **{name: _draw(rng, priors[name]) for name in preset.source_params}}


def example_targets(preset: Preset, params: dict) -> dict[str, float]:
    """Regression targets of an example; NaN where the class does not define one."""
    p = {**fixed_params(preset), **params}
    return {name: float(p.get(name, math.nan)) for name in preset.targets}


def example_nuisance(preset: Preset, params: dict) -> dict[str, float]:
    """Drawn nuisance parameters; NaN where undefined for the class."""
    p = {**fixed_params(preset), **params}
    out = {}
    for name in preset.nuisances:
        if name == "n_subhalos":
            value = len(p["subhalo_mass_msun"]) if "subhalo_mass_msun" in p else 0
        elif name == "log10_subhalo_mass_total_msun":
            masses = p.get("subhalo_mass_msun")
            value = math.log10(float(np.sum(masses))) if masses is not None else math.nan
        else:
            value = p.get(name, math.nan)
        out[name] = float(value)
    return out


def simulate_example(preset: Preset | str, seed: int, index: int) -> dict:
    """Example `index` of (preset, seed): a pure function of its arguments.

    Returns {"image": float32 [H, W, 1] (instrument units), "class_id": int (index into
    schema.CLASS_NAMES), "targets": {name: float}, "nuisance": {name: float}}.
    `preset` may be a name (the preset's default classes). With `preset.source_seed` set,
    the lens and substructure are example `index`'s and the source and noise are redrawn
    (`source_twin_rngs`), so two source seeds give two images of one lens.
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
    params_rng, noise_rng = example_rngs(seed, index)
    class_name = class_of_index(preset, index)
    params = draw_params(preset, params_rng, class_name)
    if preset.source_seed is not None:
        source_rng, noise_rng = source_twin_rngs(seed, index, preset.source_seed)
        params = redraw_source(preset, params, source_rng)
    return {
        "image": render_image(preset, params, noise_rng),
        "class_id": CLASS_NAMES.index(class_name),
        "targets": example_targets(preset, params),
        "nuisance": example_nuisance(preset, params),
    }


def simulate_range(preset: Preset, seed: int, start: int, stop: int) -> list[dict]:
    """Examples start..stop-1 (what a worker process computes), each with its "index"."""
    out = []
    for index in range(start, stop):
        example = simulate_example(preset, seed, index)
        example["index"] = index
        out.append(example)
    return out

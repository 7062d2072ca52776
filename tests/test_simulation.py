"""Simulator physics against lenstronomy called directly, priors, pixel convention, D4."""

import math

import numpy as np
import pytest

from deeplense_tf.errors import ConfigError
from deeplense_tf.simulation import (
    get_preset,
    parse_classes,
    physics,
    presets,
    render_image,
    simulate_example,
    simulator,
)

# Float32 storage of float64 lenstronomy images: compare to this relative precision.
RTOL = 2e-6


def _assert_image_close(ours, reference, rtol=RTOL):
    reference = np.asarray(reference, dtype=np.float64)
    assert ours.shape == reference.shape + (1,) and ours.dtype == np.float32
    np.testing.assert_allclose(ours[:, :, 0], reference, rtol=rtol, atol=rtol * reference.max())


def _params(preset, class_name, seed=3):
    return simulator.draw_params(preset, np.random.default_rng(seed), class_name)


# --- constants and formulas --------------------------------------------------------------------


def test_einstein_radius_is_deeplense_point_mass_formula_with_luminosity_distances():
    import astropy.units as u
    from astropy.constants import G, M_sun, c
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=70, Om0=0.3, Ob0=0.05)
    d_l = cosmo.luminosity_distance(0.5).to(u.m)
    d_s = cosmo.luminosity_distance(1.0).to(u.m)
    expected = (np.sqrt(4 * G * 1e12 * M_sun / c**2 * (d_s - d_l) / (d_l * d_s)) * 206265).value
    assert physics.point_mass_einstein_radius(1e12) == pytest.approx(expected, rel=1e-12)
    assert presets.DEEPLENSE_THETA_E_ARCSEC == pytest.approx(expected, rel=1e-12)
    assert 1.2 < expected < 1.3  # the reference's "about 1.2-1.3 arcsec"
    # theta_E ∝ sqrt(M), and angular-diameter distances give a different (honest) value.
    assert physics.point_mass_einstein_radius(4e12) == pytest.approx(2 * expected, rel=1e-12)
    assert physics.point_mass_einstein_radius(1e12, distances="angular") != pytest.approx(expected)


def test_multiplane_scale_puts_model_2_ring_near_0_8_arcsec():
    scale = physics.multiplane_deflection_scale()
    assert presets.DEEPLENSE_DEFLECTION_SCALE == pytest.approx(scale, rel=1e-12)
    assert scale == pytest.approx(0.63, abs=0.01)
    assert get_preset("deeplense-model-2").deflection_scale * presets.DEEPLENSE_THETA_E_ARCSEC \
        == pytest.approx(0.81, abs=0.02)
    assert get_preset("deeplense-model-1").deflection_scale == 1.0


def test_vortex_half_length_law():
    assert physics.vortex_half_length_arcsec(1e-22) == pytest.approx(0.03)
    assert physics.vortex_half_length_arcsec(1e-24) == pytest.approx(3.0)
    masses = 10 ** np.linspace(-24, -22, 7)
    np.testing.assert_allclose(physics.vortex_half_length_arcsec(masses) * masses, 0.03e-22)


def test_axion_vortex_is_100_equal_point_masses_on_a_line_of_half_length_l():
    preset = get_preset("deeplense-model-2")
    params = _params(preset, "axion")
    log10_m = params["log10_m_axion_ev"]
    assert -24 <= log10_m <= -22
    half_length = 0.03 * 1e-22 / 10**log10_m
    assert params["vortex_half_length_arcsec"] == pytest.approx(half_length, rel=1e-12)
    _, kwargs_lens, _ = simulator.lenstronomy_inputs(preset, params)
    points = kwargs_lens[2:]
    assert len(points) == 100
    xy = np.array([[k["center_x"], k["center_y"]] for k in points])
    assert np.hypot(*xy[0]) == pytest.approx(half_length)
    assert np.hypot(*xy[-1]) == pytest.approx(half_length)
    np.testing.assert_allclose(xy[0], -xy[-1], atol=1e-12)  # through the lens centre
    direction = np.array([math.cos(params["vortex_angle_rad"]), math.sin(params["vortex_angle_rad"])])
    np.testing.assert_allclose(np.cross(xy, direction), 0.0, atol=1e-12)  # on one line
    np.testing.assert_allclose(np.diff(xy @ direction), 2 * half_length / 99, rtol=1e-9)
    # Each carries 3e10 / 100 M_sun; deflections shrunk by the Model II quirk (theta_E**2 ∝ f).
    theta = physics.point_mass_einstein_radius(3e8) * math.sqrt(preset.deflection_scale)
    np.testing.assert_allclose([k["theta_E"] for k in points], theta, rtol=1e-12)


def test_cdm_subhalos_count_mass_range_slope_and_radius():
    from scipy import stats

    preset = get_preset("deeplense-model-2")
    rng = np.random.default_rng(0)
    draws = [simulator.draw_params(preset, rng, "cdm") for _ in range(200)]
    assert {len(d["subhalo_mass_msun"]) for d in draws} == {25}
    masses = np.concatenate([d["subhalo_mass_msun"] for d in draws])
    assert masses.min() >= 1e6 and masses.max() <= 1e10
    radius = np.hypot(np.concatenate([d["subhalo_x_arcsec"] for d in draws]),
                      np.concatenate([d["subhalo_y_arcsec"] for d in draws]))
    assert radius.min() >= 0.25 and radius.max() <= 2.0

    def cdf(m, slope):
        a, b = 1e6 ** (slope + 1), 1e10 ** (slope + 1)
        return (m ** (slope + 1) - a) / (b - a)

    assert stats.kstest(masses, lambda m: cdf(m, -0.9)).pvalue > 1e-3
    # The slope is really -0.9 (the code comment's -1.9 would put 99 % below 1e8 M_sun).
    assert np.mean(masses < 1e8) == pytest.approx(cdf(1e8, -0.9), abs=0.03)
    assert stats.kstest(masses, lambda m: cdf(m, -1.9)).pvalue < 1e-6
    # Their lenstronomy Einstein radii follow the same point-mass formula.
    _, kwargs_lens, _ = simulator.lenstronomy_inputs(preset, draws[0])
    expected = physics.point_mass_einstein_radius(draws[0]["subhalo_mass_msun"]) * math.sqrt(
        preset.deflection_scale)
    np.testing.assert_allclose([k["theta_E"] for k in kwargs_lens[2:]], expected, rtol=1e-12)


# --- images against lenstronomy called directly --------------------------------------------


def _deeplense_sim_2_reference(preset, params):
    """DeepLenseSim `simple_sim_2` (Models II/III) with lenstronomy's own multi-plane SimAPI."""
    from astropy.cosmology import FlatLambdaCDM
    from lenstronomy.SimulationAPI.sim_api import SimAPI

    theta_main = physics.point_mass_einstein_radius(1e12)
    kwargs_lens = [{"theta_E": theta_main, "e1": 0.1, "e2": 0, "center_x": 0, "center_y": 0.0},
                   {"gamma1": 0.05, "gamma2": 0}]
    if params["class"] == "cdm":
        for m, x, y in zip(params["subhalo_mass_msun"], params["subhalo_x_arcsec"],
                           params["subhalo_y_arcsec"]):
            kwargs_lens.append({"theta_E": physics.point_mass_einstein_radius(m),
                                "center_x": x, "center_y": y})
    elif params["class"] == "axion":
        length = 0.06 / (2 * 10 ** params["log10_m_axion_ev"]) * 1e-22
        coords = np.linspace(-length, length, 100)
        angle = params["vortex_angle_rad"]
        for s in coords:
            kwargs_lens.append({"theta_E": physics.point_mass_einstein_radius(3e10 / 100),
                                "center_x": s * np.cos(angle), "center_y": s * np.sin(angle)})
    models = ["SIE", "SHEAR"] + ["POINT_MASS"] * (len(kwargs_lens) - 2)
    kwargs_model = {
        "lens_model_list": models,
        "lens_redshift_list": [0.5] * len(models),
        "source_light_model_list": ["SERSIC_ELLIPSE"],
        "source_redshift_list": [1.0],
        "cosmo": FlatLambdaCDM(H0=67.5, Om0=0.309, Ob0=0.049),  # pyHalo's default
        "z_source_convention": 2.5,
        "z_source": 1.0,
    }
    sim = SimAPI(num_pix=64, kwargs_single_band=preset.instrument.band_kwargs,
                 kwargs_model=kwargs_model)
    image_sim = sim.image_model_class({"point_source_supersampling_factor": 1})
    source_mag = [{"magnitude": 20, "R_sersic": 0.25, "n_sersic": 1, "e1": -0.1, "e2": 0.1,
                   "center_x": params["source_x_arcsec"], "center_y": params["source_y_arcsec"]}]
    _, kwargs_source, _ = sim.magnitude2amplitude(None, source_mag)
    image = image_sim.image(kwargs_lens, kwargs_source, None)
    return image + image


@pytest.mark.parametrize("model", [2, 3])
@pytest.mark.parametrize("class_name", ["no_sub", "cdm", "axion"])
def test_models_2_and_3_match_lenstronomy_multiplane_simapi(model, class_name):
    preset = get_preset(f"deeplense-model-{model}")
    params = _params(preset, class_name)
    with pytest.warns(UserWarning, match="Cosmology"):  # lenstronomy's multi-plane notice
        reference = _deeplense_sim_2_reference(preset, params)
    ours = render_image(preset, params)
    _assert_image_close(ours, reference)
    # As published: noise-free, so the rng is ignored.
    np.testing.assert_array_equal(ours, render_image(preset, params, np.random.default_rng(1)))


def test_model_2_image_scale_matches_published_files():
    preset = get_preset("deeplense-model-2", classes="mix")
    images = np.stack([simulate_example(preset, 0, i)["image"] for i in range(24)])
    assert np.median(images.max(axis=(1, 2, 3))) == pytest.approx(4.0, rel=0.1)
    assert np.median(images.mean(axis=(1, 2, 3))) == pytest.approx(0.12, rel=0.15)
    assert np.median(images[:, :4, :4]) < 1e-4  # empty corners


@pytest.mark.parametrize("class_name", ["no_sub", "cdm", "axion"])
def test_model_1_matches_lenstronomy_image_model(class_name):
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel
    from lenstronomy.Util import util

    preset = get_preset("deeplense-model-1")
    params = _params(preset, class_name)
    assert 10**3 <= params["exposure_s"] <= 10**3.5
    # DeepLenseSim `simple_sim`, built here from scratch.
    _, _, ra0, dec0, _, _, pix2coord, _ = util.make_grid_with_coordtransform(
        num_pix=150, delta_pix=0.05, center_ra=0, center_dec=0, subgrid_res=1, inverse=False)
    data = ImageData(background_rms=0.01, exposure_time=params["exposure_s"], ra_at_xy_0=ra0,
                     dec_at_xy_0=dec0, transform_pix2angle=pix2coord,
                     image_data=np.zeros((150, 150)))
    psf = PSF(psf_type="GAUSSIAN", fwhm=0.087, pixel_size=0.05, truncation=3)
    _, kwargs_lens, _ = simulator.lenstronomy_inputs(preset, params)
    assert kwargs_lens[0]["theta_E"] == pytest.approx(physics.point_mass_einstein_radius(1e12))
    source = [{"amp": 20, "R_sersic": 0.25, "n_sersic": 1, "e1": -0.1, "e2": 0.1,
               "center_x": params["source_x_arcsec"], "center_y": params["source_y_arcsec"]}]
    model = ImageModel(data, psf, lens_model_class=LensModel(["SIE", "SHEAR"] + ["POINT_MASS"] * (
        len(kwargs_lens) - 2)), source_model_class=LightModel(["SERSIC_ELLIPSE"]),
        kwargs_numerics={"supersampling_factor": 1, "supersampling_convolution": False})
    reference = model.image(kwargs_lens, source) * params["exposure_s"]
    _assert_image_close(render_image(preset, params), reference)


def test_model_1_noise_is_poisson_counts_with_clipped_background():
    preset = get_preset("deeplense-model-1", classes="no_sub")
    examples = [simulate_example(preset, 5, i) for i in range(4)]
    for ex in examples:
        image, exposure = ex["image"][:, :, 0], ex["nuisance"]["exposure_s"]
        assert np.array_equal(image, np.round(image)) and image.min() >= 0  # integer counts
        # Empty corner: Poisson(max(0, exposure * 0.01 * N(0, 1))) has mean
        # exposure * 0.01 / sqrt(2 pi).
        corner = np.concatenate([image[:30, :30].ravel(), image[-30:, -30:].ravel()])
        assert corner.mean() == pytest.approx(exposure * 0.01 / math.sqrt(2 * math.pi), rel=0.12)
    peaks = [ex["image"].max() for ex in examples]
    assert 200 < np.median(peaks) < 900  # the published files: median peak about 430


@pytest.mark.parametrize("name", ["deeplense-model-2-noisy", "deeplense-model-3-noisy",
                                  "varied-lens-64"])
def test_noisy_presets_add_the_instruments_noise_to_one_model_image(name):
    preset = get_preset(name)
    band = simulator.single_band(preset.instrument)
    params_rng, noise_rng = simulator.example_rngs(0, 0)
    params = simulator.draw_params(preset, params_rng, "axion")
    clean = render_image(preset, params)
    noisy = render_image(preset, params, noise_rng)
    _assert_image_close(clean, simulator.render_model(preset, params))  # not doubled
    residual = (noisy - clean)[:, :, 0].astype(np.float64)
    corners = np.concatenate([residual[:12, :12].ravel(), residual[-12:, -12:].ravel()])
    assert corners.std() == pytest.approx(band.background_noise, rel=0.15)
    assert abs(corners.mean()) < 4 * band.background_noise / math.sqrt(corners.size)
    # Poisson noise grows with flux: the residual is wider where the arc is bright.
    bright = clean[:, :, 0] > np.percentile(clean, 95)
    assert residual[bright].std() > 1.5 * corners.std()
    # simulate_example draws the same (default class: axion) from the same streams.
    assert np.array_equal(noisy, simulate_example(preset, 0, 0)["image"])


def test_the_clean_twin_draws_the_same_lenses_without_noise():
    noisy, clean = get_preset("varied-lens-64"), get_preset("varied-lens-64-clean")
    assert clean.image_mode == "clean" and clean.targets == noisy.targets
    assert clean.target_kinds == noisy.target_kinds and clean.macro == noisy.macro
    for index in range(3):
        params_rng, _ = simulator.example_rngs(5, index)
        params = simulator.draw_params(noisy, params_rng, "axion")
        example = simulate_example(clean, 5, index)
        # Same parameters from the same stream, and the noise-free render of the noisy preset.
        assert example["targets"]["theta_e_arcsec"] == params["theta_e_arcsec"]
        assert np.array_equal(example["image"], render_image(noisy, params))
        assert not np.array_equal(example["image"], simulate_example(noisy, 5, index)["image"])


def test_a_source_twin_is_the_same_lens_and_substructure_lensing_another_source():
    base = get_preset("varied-lens-64", classes="mix")
    for index in range(3):  # no_sub, cdm, axion
        params_rng, _ = simulator.example_rngs(7, index)
        params = simulator.draw_params(base, params_rng, simulator.class_of_index(base, index))
        twins = [simulate_example(base.with_source_seed(k), 7, index) for k in (0, 1)]
        original = simulate_example(base, 7, index)
        for twin in twins:
            # Every lens and substructure value is the original's; every varied source one is not.
            for name in base.targets:
                value, drawn = twin["targets"][name], original["targets"][name]
                if name in base.source_params and base.macro_priors[name][0] != "fixed":
                    assert value != drawn, name
                else:
                    assert value == drawn or (math.isnan(value) and math.isnan(drawn)), name
            assert twin["class_id"] == original["class_id"]
        # Re-rendering the twin's parameters gives its image (noise aside: the clean twin).
        twin_params = simulator.redraw_source(base, params, simulator.source_twin_rngs(7, index, 1)[0])
        for name in ("subhalo_x_arcsec", "subhalo_mass_msun", "vortex_angle_rad"):
            assert np.array_equal(twin_params.get(name, np.nan), params.get(name, np.nan),
                                  equal_nan=True), name
        clean = get_preset("varied-lens-64-clean", classes="mix").with_source_seed(1)
        assert np.array_equal(simulate_example(clean, 7, index)["image"],
                              render_image(base, twin_params))
        assert not np.array_equal(twins[0]["image"], twins[1]["image"])
    # The source seed is part of the example's identity: the same seed gives the same twin.
    again = simulate_example(base.with_source_seed(1), 7, 2)
    assert np.array_equal(again["image"], simulate_example(base.with_source_seed(1), 7, 2)["image"])
    assert base.with_source_seed(None) is base
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="--source-seed"):
            base.with_source_seed(bad)


def test_varied_preset_matches_lenstronomy_single_plane():
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel
    from lenstronomy.SimulationAPI.sim_api import SimAPI

    preset = get_preset("varied-lens-64")
    params = _params(preset, "axion", seed=11)
    band = preset.instrument.band_kwargs
    sim = SimAPI(num_pix=64, kwargs_single_band=band,
                 kwargs_model={"lens_model_list": [], "source_light_model_list": ["SERSIC_ELLIPSE"]})
    source_mag = [{"magnitude": params["source_magnitude"], "R_sersic": params["source_r_arcsec"],
                   "n_sersic": 1.0, "e1": params["source_e1"], "e2": params["source_e2"],
                   "center_x": params["source_x_arcsec"], "center_y": params["source_y_arcsec"]}]
    _, kwargs_source, _ = sim.magnitude2amplitude(None, source_mag)
    theta_point = physics.point_mass_einstein_radius(3e8, distances="angular")
    xs, ys = physics.vortex_positions(params["vortex_half_length_arcsec"],
                                      params["vortex_angle_rad"])
    kwargs_lens = [{"theta_E": params["theta_e_arcsec"], "e1": params["lens_e1"],
                    "e2": params["lens_e2"], "center_x": 0, "center_y": 0},
                   {"gamma1": params["shear_g1"], "gamma2": params["shear_g2"]}] + [
        {"theta_E": theta_point, "center_x": x, "center_y": y} for x, y in zip(xs, ys)]
    model = ImageModel(sim.data_class, sim.psf_class,
                       lens_model_class=LensModel(["SIE", "SHEAR"] + ["POINT_MASS"] * 100),
                       source_model_class=LightModel(["SERSIC_ELLIPSE"]))
    _assert_image_close(render_image(preset, params), model.image(kwargs_lens, kwargs_source))


# --- pixel convention and symmetries ---------------------------------------------------------


def test_pixel_grid_col_is_plus_x_and_row_is_plus_y():
    preset = get_preset("varied-lens-64", classes="no_sub")
    centre = (preset.instrument.num_pix - 1) / 2
    scale = preset.instrument.pixel_scale_arcsec
    unlensed = {"class": "no_sub", "theta_e_arcsec": 1e-4, "shear_g1": 0.0, "shear_g2": 0.0,
                "source_r_arcsec": 0.05, "source_e1": 0.0, "source_e2": 0.0,
                "lens_e1": 0.0, "lens_e2": 0.0, "source_magnitude": 20.0}
    for x, y in [(1.0, 0.0), (0.0, 1.0), (-0.5, 1.5)]:
        image = render_image(preset, {**unlensed, "source_x_arcsec": x, "source_y_arcsec": y})
        row, col = np.unravel_index(np.argmax(image[:, :, 0]), image.shape[:2])
        assert (col - centre) * scale == pytest.approx(x, abs=scale)
        assert (row - centre) * scale == pytest.approx(y, abs=scale)


def _transform_params(params, vector, spin2_sign, angle_map):
    """Apply a D4 element to drawn parameters: vector (2x2 on (x, y)), spin-2 signs/swap."""
    out = dict(params)
    m = np.asarray(vector)
    for xk, yk in (("source_x_arcsec", "source_y_arcsec"), ("subhalo_x_arcsec", "subhalo_y_arcsec")):
        if xk in params:
            x, y = np.asarray(params[xk]), np.asarray(params[yk])
            out[xk], out[yk] = m[0, 0] * x + m[0, 1] * y, m[1, 0] * x + m[1, 1] * y
    for a, b in (("lens_e1", "lens_e2"), ("shear_g1", "shear_g2"), ("source_e1", "source_e2")):
        if a in params:
            out[a], out[b] = spin2_sign[0] * params[a], spin2_sign[1] * params[b]
    if "vortex_angle_rad" in params:
        out["vortex_angle_rad"] = angle_map(params["vortex_angle_rad"])
    return out


# name: (image op, matrix on (x, y), spin-2 signs, vortex angle map)
_D4_CASES = {
    "rot180": (lambda im: im[::-1, ::-1], [[-1, 0], [0, -1]], (1, 1), lambda a: a + math.pi),
    "flip_x": (lambda im: im[:, ::-1], [[-1, 0], [0, 1]], (1, -1), lambda a: math.pi - a),
    "rot90": (lambda im: np.swapaxes(im, 0, 1)[:, ::-1], [[0, -1], [1, 0]], (-1, -1),
              lambda a: a + math.pi / 2),
    "flip_x_rot270": (lambda im: np.swapaxes(im, 0, 1), [[0, 1], [1, 0]], (-1, 1),
                      lambda a: math.pi / 2 - a),
}


@pytest.mark.parametrize("element", sorted(_D4_CASES))
@pytest.mark.parametrize("class_name", ["cdm", "axion"])
def test_varied_preset_is_exactly_d4_symmetric(element, class_name):
    preset = get_preset("varied-lens-64")
    assert element in preset.exact_symmetries
    params = _params(preset, class_name, seed=7)
    image_op, vector, spin2, angle = _D4_CASES[element]
    expected = image_op(render_image(preset, params))
    moved = render_image(preset, _transform_params(params, vector, spin2, angle))
    _assert_image_close(moved, expected[:, :, 0], rtol=1e-5)


def test_deeplense_presets_are_symmetric_under_rot180_only():
    preset = get_preset("deeplense-model-2")
    assert preset.exact_symmetries == ("identity", "rot180")
    params = _params(preset, "axion")
    image_op, vector, spin2, angle = _D4_CASES["rot180"]
    _assert_image_close(render_image(preset, _transform_params(params, vector, spin2, angle)),
                        image_op(render_image(preset, params))[:, :, 0], rtol=1e-5)
    # A mirror would need the source ellipticity e2 = -0.1, which the preset never draws:
    # mirrored parameters of the preset do not give the mirrored image.
    image_op, vector, spin2, angle = _D4_CASES["flip_x"]
    moved = _transform_params(params, vector, spin2, angle)
    moved.update(source_e1=-0.1, source_e2=0.1, lens_e1=0.1, lens_e2=0.0, shear_g2=0.0)
    mirrored = image_op(render_image(preset, params))
    assert np.abs(render_image(preset, moved) - mirrored).max() > 0.05 * mirrored.max()


# --- examples and presets ------------------------------------------------------------------


def test_simulate_example_is_a_pure_function_of_preset_seed_index():
    preset = get_preset("deeplense-model-2-noisy", classes="mix")
    a, b = simulate_example(preset, 1, 5), simulate_example(preset, 1, 5)
    assert np.array_equal(a["image"], b["image"]) and a["nuisance"] == b["nuisance"]
    assert not np.array_equal(a["image"], simulate_example(preset, 2, 5)["image"])
    assert not np.array_equal(a["image"], simulate_example(preset, 1, 8)["image"])  # same class
    by_name = simulate_example("deeplense-model-2-noisy", 1, 5)  # default classes: axion
    assert by_name["class_id"] == 2 and by_name["targets"] == simulate_example(
        get_preset("deeplense-model-2-noisy"), 1, 5)["targets"]


def test_example_content_targets_and_nuisance_per_class():
    preset = get_preset("deeplense-model-1", classes="mix")
    seen = {}
    for index in range(3):
        ex = simulate_example(preset, 0, index)
        assert ex["image"].shape == (150, 150, 1) and ex["image"].dtype == np.float32
        assert set(ex["targets"]) == set(preset.targets)
        assert set(ex["nuisance"]) == set(preset.nuisances)
        seen[ex["class_id"]] = ex
    no_sub, cdm, axion = seen[0], seen[1], seen[2]  # classes cycle with the index
    assert math.isnan(no_sub["targets"]["log10_m_axion_ev"])
    assert math.isnan(cdm["targets"]["log10_m_axion_ev"])
    assert -24 <= axion["targets"]["log10_m_axion_ev"] <= -22
    assert cdm["nuisance"]["n_subhalos"] == 25 and no_sub["nuisance"]["n_subhalos"] == 0
    assert 6 < cdm["nuisance"]["log10_subhalo_mass_total_msun"] < 10 + math.log10(25)
    assert math.isnan(axion["nuisance"]["log10_subhalo_mass_total_msun"])
    assert 0 <= axion["nuisance"]["vortex_angle_rad"] < 2 * math.pi
    assert math.isnan(cdm["nuisance"]["vortex_angle_rad"])
    for ex in seen.values():
        assert abs(ex["nuisance"]["source_x_arcsec"]) <= 0.35
        assert 1e3 <= ex["nuisance"]["exposure_s"] <= 10**3.5


def test_varied_preset_targets_kinds_and_ranges():
    preset = get_preset("varied-lens-64")
    ex = simulate_example(preset, 0, 0)
    assert set(preset.targets) >= {"theta_e_arcsec", "lens_e1", "lens_e2", "shear_g1", "shear_g2",
                                   "source_x_arcsec", "source_y_arcsec", "source_r_arcsec",
                                   "log10_m_axion_ev"}
    assert all(np.isfinite(v) for v in ex["targets"].values())
    assert 0.6 <= ex["targets"]["theta_e_arcsec"] <= 1.6
    kinds = preset.target_kinds
    for a, b, kind in (("lens_e1", "lens_e2", "spin2"), ("shear_g1", "shear_g2", "spin2"),
                       ("source_x_arcsec", "source_y_arcsec", "vector")):
        assert kinds[a] == {"kind": kind, "partner": b, "component": 0}
        assert kinds[b] == {"kind": kind, "partner": a, "component": 1}
    assert set(kinds) == set(preset.targets)


def test_get_preset_and_classes():
    assert set(presets.PRESET_NAMES) >= {"deeplense-model-1", "deeplense-model-2",
                                         "deeplense-model-3", "deeplense-model-2-noisy",
                                         "deeplense-model-3-noisy", "varied-lens-64",
                                         "varied-lens-64-clean"}
    with pytest.raises(ConfigError, match="deeplense-model-2.*varied-lens-64"):
        get_preset("deeplense-model-9")
    assert get_preset("deeplense-model-2").classes == ("axion",)
    assert get_preset("deeplense-model-2", classes="mix").classes == ("no_sub", "cdm", "axion")
    assert parse_classes("axion,no_sub") == ("no_sub", "axion")
    assert parse_classes(["cdm"]) == ("cdm",)
    for bad in ("", "axion,axion", "wdm", ["mix", "cdm"]):
        with pytest.raises(ConfigError):
            parse_classes(bad)

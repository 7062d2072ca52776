"""D4 augmentation: group structure, agreement between images, positions and spin-2
quantities, numpy vs tf (eager and inside Dataset.map), and the simulator's physics."""

from __future__ import annotations

import importlib
import itertools

import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import blob_image, pixel_coordinates

from deeplense_tf.data import augment as d4
from deeplense_tf.data.schema import D4_ELEMENTS
from deeplense_tf.errors import DataError

KINDS = {
    "theta_e_arcsec": {"kind": "scalar"},
    "x": {"kind": "vector", "partner": "y", "component": 0},
    "y": {"kind": "vector", "partner": "x", "component": 1},
    "e1": {"kind": "spin2", "partner": "e2", "component": 0},
    "e2": {"kind": "spin2", "partner": "e1", "component": 1},
}


def _asymmetric_images(batch=3, size=6, channels=1):
    rng = np.random.default_rng(1)
    return rng.normal(size=(batch, size, size, channels)).astype(np.float32)


def test_convention_is_pinned():
    # rot90 turns the sky counter-clockwise in (x, y); flip_x mirrors x.
    assert d4.transform_vector(1.0, 0.0, "rot90") == (0.0, 1.0)
    assert d4.transform_vector(1.0, 2.0, "flip_x") == (-1.0, 2.0)
    assert d4.transform_vector(1.0, 2.0, "flip_x_rot270") == (2.0, 1.0)  # the x <-> y swap
    # A rotation by 90 degrees multiplies e1 + i e2 by e^{i pi} = -1; a mirror conjugates.
    assert d4.transform_spin2(0.1, 0.2, "rot90") == (-0.1, -0.2)
    assert d4.transform_spin2(0.1, 0.2, "flip_x") == (0.1, -0.2)


@pytest.mark.parametrize("g,h", list(itertools.product(D4_ELEMENTS, D4_ELEMENTS)))
def test_composition_table_closes_on_images_vectors_and_spin2(g, h):
    images = _asymmetric_images()
    gh = d4.compose(g, h)
    assert gh in D4_ELEMENTS
    np.testing.assert_array_equal(
        d4.transform_image(d4.transform_image(images, h), g), d4.transform_image(images, gh)
    )
    np.testing.assert_array_equal(d4.vector_matrix(gh), d4.vector_matrix(g) @ d4.vector_matrix(h))
    # Spin-2 is a representation too: S(g h) = S(g) S(h).
    np.testing.assert_array_equal(d4.spin2_matrix(gh), d4.spin2_matrix(g) @ d4.spin2_matrix(h))


def test_group_axioms():
    images = _asymmetric_images()
    seen = {d4.transform_image(images, g).tobytes() for g in D4_ELEMENTS}
    assert len(seen) == 8  # eight distinct actions on an asymmetric image
    for g in D4_ELEMENTS:
        assert d4.compose(g, "identity") == d4.compose("identity", g) == g
        g_inv = d4.inverse(g)
        assert d4.compose(g, g_inv) == d4.compose(g_inv, g) == "identity"
        np.testing.assert_array_equal(
            d4.transform_image(d4.transform_image(images, g), g_inv), images
        )
    # Four rotations form the cyclic subgroup; rot90 has order 4.
    assert d4.compose("rot90", d4.compose("rot90", "rot90")) == "rot270"
    assert d4.compose("rot180", "rot180") == "identity"


@pytest.mark.parametrize("name", D4_ELEMENTS)
def test_bright_spot_moves_where_transform_vector_says(name):
    size = 9  # odd: the image centre is a pixel centre too
    x, y = pixel_coordinates(size, pixel_scale=1.0)
    image = np.zeros((size, size, 1), np.float32)
    row, col = 1, 6  # off every symmetry axis
    image[row, col, 0] = 1.0
    moved = d4.transform_image(image, name)
    new_row, new_col = np.unravel_index(np.argmax(moved[..., 0]), (size, size))
    expected = d4.transform_vector(x[row, col], y[row, col], name)
    assert (x[new_row, new_col], y[new_row, new_col]) == pytest.approx(expected)


def _measured_ellipticity(image):
    x, y = pixel_coordinates(image.shape[0])
    weights = image[..., 0] / image[..., 0].sum()
    xc, yc = (weights * x).sum(), (weights * y).sum()
    qxx = (weights * (x - xc) ** 2).sum()
    qyy = (weights * (y - yc) ** 2).sum()
    qxy = (weights * (x - xc) * (y - yc)).sum()
    return np.array([(qxx - qyy) / (qxx + qyy), 2 * qxy / (qxx + qyy)]), np.array([xc, yc])


@pytest.mark.parametrize("name", D4_ELEMENTS)
def test_spin2_and_centre_follow_the_image(name):
    # An elliptical blob: the second moments give (e1, e2) in the (x, y) frame.
    image = blob_image(0.2, -0.3, 0.25, 0.1, size=24)
    before, centre = _measured_ellipticity(image)
    after, new_centre = _measured_ellipticity(d4.transform_image(image, name))
    np.testing.assert_allclose(after, d4.transform_spin2(*before, name), atol=1e-6)
    np.testing.assert_allclose(new_centre, d4.transform_vector(*centre, name), atol=1e-6)


@pytest.mark.parametrize("name", D4_ELEMENTS)
def test_tf_eager_and_dataset_map_match_numpy(name):
    images = _asymmetric_images(batch=4)
    expected = d4.transform_image(images, name)
    np.testing.assert_array_equal(d4.transform_image(tf.constant(images), name).numpy(), expected)
    # Also works on a single image [H, W, C] inside Dataset.map.
    mapped = tf.data.Dataset.from_tensor_slices(images).map(lambda im: d4.transform_image(im, name))
    np.testing.assert_array_equal(np.stack(list(mapped.as_numpy_iterator())), expected)
    e1, e2 = np.float32([0.1, -0.2]), np.float32([0.3, 0.05])
    np.testing.assert_array_equal(
        np.array([t.numpy() for t in d4.transform_spin2(tf.constant(e1), tf.constant(e2), name)]),
        np.array(d4.transform_spin2(e1, e2, name)),
    )


def test_per_example_ids_match_single_elements_eager_and_in_map():
    images = _asymmetric_images(batch=8, channels=2)
    ids = np.arange(8, dtype=np.int32)  # every element once
    rng = np.random.default_rng(0)
    targets = {k: rng.normal(size=8).astype(np.float32) for k in KINDS}
    targets["e2"][3] = np.nan  # undefined component: must not leak into e1

    eager_images, eager_targets = d4.augment_batch(
        tf.constant(images),
        {k: tf.constant(v) for k, v in targets.items()},
        tf.constant(ids),
        KINDS,
    )
    dataset = tf.data.Dataset.from_tensors((images, targets, ids)).map(
        lambda im, t, i: d4.augment_batch(im, t, i, KINDS)
    )
    mapped_images, mapped_targets = next(iter(dataset))
    for b, name in enumerate(D4_ELEMENTS):
        expected_image = d4.transform_image(images[b], name)
        expected = d4.transform_targets({k: v[b] for k, v in targets.items()}, name, KINDS)
        for got_images, got_targets in (
            (eager_images, eager_targets),
            (mapped_images, mapped_targets),
        ):
            np.testing.assert_array_equal(got_images.numpy()[b], expected_image)
            for key in KINDS:
                np.testing.assert_array_equal(got_targets[key].numpy()[b], expected[key])
    assert np.isfinite(eager_targets["e1"].numpy()[3])
    assert eager_targets["theta_e_arcsec"].numpy() == pytest.approx(targets["theta_e_arcsec"])


def test_inverse_transforms_undo_targets_for_test_time_augmentation():
    images = _asymmetric_images(batch=2)
    views = d4.d4_images(images)
    assert len(views) == 8
    np.testing.assert_array_equal(views[D4_ELEMENTS.index("rot180")], images[:, ::-1, ::-1])
    truth = {
        "x": np.float32([0.3, -0.1]),
        "y": np.float32([0.2, 0.4]),
        "e1": np.float32([0.1, 0.0]),
        "e2": np.float32([-0.2, 0.3]),
        "theta_e_arcsec": np.float32([1.0, 1.2]),
    }
    for name in D4_ELEMENTS:
        # What an ideal model predicts on the transformed view, mapped back.
        predicted = d4.transform_targets(truth, name, KINDS)
        back = d4.inverse_transform_targets(predicted, name, KINDS)
        for key in truth:
            np.testing.assert_array_equal(back[key], truth[key])


def test_random_ids_draw_only_allowed_elements():
    allowed = d4.allowed_elements("exact", ["rot180"])
    assert allowed == ("identity", "rot180")
    ids = d4.random_element_ids(400, allowed, tf.constant([3, 4], tf.int64)).numpy()
    assert set(ids) == {D4_ELEMENTS.index("identity"), D4_ELEMENTS.index("rot180")}
    ids = d4.random_element_ids(400, d4.allowed_elements("d4"), tf.constant([3, 4], tf.int64))
    assert set(ids.numpy()) == set(range(8))
    assert d4.allowed_elements("none") == ("identity",)
    with pytest.raises(DataError, match="rot45"):
        d4.allowed_elements("exact", ["rot45"])


def test_bad_target_kinds_and_lone_components_are_errors():
    with pytest.raises(DataError, match="partner"):
        d4.target_pairs({"e1": {"kind": "spin2", "partner": "e2", "component": 0}})
    with pytest.raises(DataError, match="unknown kind"):
        d4.target_pairs({"a": {"kind": "tensor"}})
    with pytest.raises(DataError, match="partner 'y'"):
        d4.transform_targets({"x": 1.0}, "rot90", KINDS)


# --- physics: the simulator's images transform like their parameters -----------------------

VARIED_PRESET = "varied-lens-64"
# Spin-2 parameters of the varied-lens preset: lens and source ellipticities, external shear.
SPIN2_PARAMS = (("lens_e1", "lens_e2"), ("shear_g1", "shear_g2"), ("source_e1", "source_e2"))


def _simulator():
    try:
        simulation = importlib.import_module("deeplense_tf.simulation")
    except ImportError as error:  # pragma: no cover - depends on the simulator package
        pytest.skip(f"simulator not importable ({error})")
    if not hasattr(simulation, "render_image"):  # pragma: no cover
        pytest.skip("deeplense_tf.simulation.render_image does not exist")
    if VARIED_PRESET not in simulation.PRESET_NAMES:  # pragma: no cover
        pytest.skip(f"no {VARIED_PRESET} preset")
    return simulation


def _transform_params(params: dict, name: str) -> dict:
    """g . params: what the simulator must be given to draw the transformed sky."""
    out = dict(params)
    for first, second in SPIN2_PARAMS:
        out[first], out[second] = (
            float(v) for v in d4.transform_spin2(params[first], params[second], name)
        )
    out["source_x_arcsec"], out["source_y_arcsec"] = (
        float(v)
        for v in d4.transform_vector(params["source_x_arcsec"], params["source_y_arcsec"], name)
    )
    if "vortex_angle_rad" in params:  # the vortex line's direction is a vector
        angle = params["vortex_angle_rad"]
        cx, cy = d4.transform_vector(np.cos(angle), np.sin(angle), name)
        out["vortex_angle_rad"] = float(np.arctan2(cy, cx))
    if "subhalo_x_arcsec" in params:
        out["subhalo_x_arcsec"], out["subhalo_y_arcsec"] = d4.transform_vector(
            np.asarray(params["subhalo_x_arcsec"]), np.asarray(params["subhalo_y_arcsec"]), name
        )
    return out


@pytest.mark.parametrize("class_name", ["axion", "cdm"])
def test_simulated_image_transforms_like_its_parameters(class_name):
    # render(g . params) == g . render(params) for the varied-lens preset (noise-free). The
    # 64x64 grid is centred between pixels and the Gaussian PSF is isotropic, so the only
    # differences are float rounding: tolerance 1e-5 of the image peak.
    simulation = _simulator()
    preset = simulation.get_preset(VARIED_PRESET)
    params = simulation.draw_params(preset, np.random.default_rng(11), class_name)
    image = simulation.render_image(preset, params)
    peak = float(np.abs(image).max())
    assert peak > 0
    for name in D4_ELEMENTS:
        moved = d4.transform_image(image, name)
        rendered = simulation.render_image(preset, _transform_params(params, name))
        np.testing.assert_allclose(rendered, moved, rtol=0, atol=1e-5 * peak, err_msg=name)
        if name != "identity":  # the check has teeth: the image is not itself symmetric
            assert np.abs(moved - image).max() > 0.05 * peak, name

"""The tf.data pipeline: each step eagerly and inside Dataset.map, label-aware augmentation,
standardisation, filtering, determinism, every source kind."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import TARGET_KINDS, make_examples, write_dataset

from deeplense_tf.data import augment as d4
from deeplense_tf.data import build_dataset, load_examples, resolve_target_stats
from deeplense_tf.data import pipeline as pl
from deeplense_tf.data.schema import D4_ELEMENTS, encode_example
from deeplense_tf.data.transforms import normalize_images
from deeplense_tf.errors import ConfigError, DataError

ALL = list(TARGET_KINDS)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    # One train shard keeps the reading order equal to the example index.
    return write_dataset(
        tmp_path_factory.mktemp("pipe"), counts={"train": 12, "val": 6}, shards={"train": 1}
    )


@pytest.fixture(scope="module")
def train(data_dir):
    return load_examples(data_dir, split="train")


def _both_ways(fn, *inputs):
    """fn applied eagerly and inside Dataset.map to the same inputs."""
    eager = fn(*inputs)
    mapped = next(iter(tf.data.Dataset.from_tensors(inputs).map(fn)))
    return eager, mapped


def _assert_nested_equal(a, b):
    tf.nest.map_structure(
        lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b
    )


# --- each step, eagerly and inside Dataset.map ----------------------------------------------


def test_parse_record_eager_and_in_map():
    images, targets, class_id, nuisance = make_examples(1)
    record = encode_example(
        images[0], 0, int(class_id[0]), {k: float(v[0]) for k, v in targets.items()}, {}
    )
    eager, mapped = _both_ways(
        lambda r: pl.parse_record(r, (16, 16, 1), ["lens_e1", "theta_e_arcsec"]),
        tf.constant(record),
    )
    _assert_nested_equal(eager, mapped)
    np.testing.assert_array_equal(eager["image"].numpy(), images[0])
    assert float(eager["targets"]["lens_e1"]) == pytest.approx(targets["lens_e1"][0])


def test_filter_step_eager_and_in_map():
    example = {
        "image": tf.zeros([2, 2, 1]),
        "targets": {"a": tf.constant(1.0), "b": tf.constant(np.nan, tf.float32)},
    }
    for names, expected in ((["a"], True), (["a", "b"], False)):
        eager, mapped = _both_ways(
            lambda ex, names=names: pl.has_defined_targets(ex, names), example
        )
        assert bool(eager) is bool(mapped) is expected


def test_standardize_and_normalize_eager_and_in_map():
    stats = {"a": {"mean": 2.0, "std": 4.0}}
    eager, mapped = _both_ways(
        lambda t: pl.standardize_targets(t, stats), {"a": tf.constant([6.0, -2.0])}
    )
    _assert_nested_equal(eager, mapped)
    np.testing.assert_allclose(eager["a"], [1.0, -1.0])
    back = pl.unstandardize_targets(eager, stats)
    np.testing.assert_allclose(back["a"], [6.0, -2.0])
    images = tf.constant(np.random.default_rng(0).random((2, 5, 5, 1)), tf.float32)
    for method in ("standardize", "minmax", "asinh", "peak_asinh"):
        eager, mapped = _both_ways(lambda x, m=method: normalize_images(x, m), images)
        np.testing.assert_allclose(eager.numpy(), mapped.numpy(), rtol=1e-6, atol=1e-7)


def test_finalize_batch_eager_and_in_map(train):
    stats = resolve_target_stats(train, ALL)
    batch = {
        "image": tf.constant(train.images[:8]),
        "targets": {k: tf.constant(v[:8]) for k, v in train.targets.items()},
    }
    ids = tf.constant(np.arange(8), tf.int32)

    def step(b, i):
        return pl.finalize_batch(
            b,
            i,
            targets=["lens_e1", "source_x_arcsec"],
            target_kinds=TARGET_KINDS,
            stats=stats,
            normalization="minmax",
        )

    eager, mapped = _both_ways(step, batch, ids)
    _assert_nested_equal(eager, mapped)
    images, targets = eager
    assert images.shape == (8, 16, 16, 1) and targets["lens_e1"].shape == (8, 1)
    for b, name in enumerate(D4_ELEMENTS):
        moved = d4.transform_image(train.images[b : b + 1], name)
        np.testing.assert_allclose(
            images.numpy()[b], normalize_images(moved, "minmax").numpy()[0], atol=1e-6
        )
        raw = d4.transform_targets({k: v[b] for k, v in train.targets.items()}, name, TARGET_KINDS)
        expected = (raw["lens_e1"] - stats["lens_e1"]["mean"]) / stats["lens_e1"]["std"]
        assert targets["lens_e1"].numpy()[b, 0] == pytest.approx(expected, abs=1e-6)


# --- build_dataset ----------------------------------------------------------------------------


def _collect(dataset):
    images, targets = [], {}
    for x, y in dataset:
        images.append(x.numpy())
        for k, v in y.items():
            targets.setdefault(k, []).append(v.numpy()[:, 0])
    return np.concatenate(images), {k: np.concatenate(v) for k, v in targets.items()}


def test_no_augmentation_gives_the_data_standardised_and_filtered(data_dir, train):
    dataset = build_dataset(
        data_dir, "train", targets=["theta_e_arcsec", "log10_m_axion_ev"], batch_size=3
    )
    images, targets = _collect(dataset)
    keep = np.isfinite(train.targets["log10_m_axion_ev"])  # only the axion class has a mass
    assert 0 < keep.sum() < len(train)
    np.testing.assert_array_equal(images, train.images[keep])
    stats = resolve_target_stats(data_dir, ["log10_m_axion_ev"])
    manifest_stats = train.metadata["target_stats"]["log10_m_axion_ev"]
    assert stats["log10_m_axion_ev"]["mean"] == manifest_stats["mean"]
    expected = (train.targets["log10_m_axion_ev"][keep] - manifest_stats["mean"]) / manifest_stats[
        "std"
    ]
    np.testing.assert_allclose(targets["log10_m_axion_ev"], expected, rtol=1e-5)
    x, y = next(iter(dataset))
    assert x.dtype == tf.float32 and y["theta_e_arcsec"].shape == (3, 1)


def _element_of(image, original):
    matches = [n for n in D4_ELEMENTS if np.array_equal(d4.transform_image(original, n), image)]
    assert len(matches) == 1  # the blobs are off-centre and elliptical: no symmetry
    return matches[0]


@pytest.mark.parametrize("augment", ["d4", "exact"])
def test_augmentation_moves_labels_with_images(data_dir, train, augment):
    stats = resolve_target_stats(data_dir, ALL)
    dataset = build_dataset(
        data_dir, "train", targets=ALL[:5], batch_size=4, augment=augment, seed=3
    )
    images, targets = _collect(dataset)
    used = set()
    for i in range(len(images)):
        name = _element_of(images[i], train.images[i])
        used.add(name)
        raw = d4.transform_targets({k: v[i] for k, v in train.targets.items()}, name, TARGET_KINDS)
        for key in ALL[:5]:
            expected = (raw[key] - stats[key]["mean"]) / stats[key]["std"]
            assert targets[key][i] == pytest.approx(expected, abs=1e-5), (key, name)
    if augment == "exact":  # the fixture's manifest lists identity and rot180 only
        assert used <= {"identity", "rot180"} and "rot180" in used
    else:
        assert len(used) >= 4


def test_augmentation_uses_partner_targets_not_chosen(data_dir, train):
    # Asking for lens_e1 alone still needs lens_e2 to transform it; the output has only lens_e1.
    dataset = build_dataset(
        data_dir, "train", targets=["lens_e1"], batch_size=12, augment="d4", seed=0
    )
    x, y = next(iter(dataset))
    assert set(y) == {"lens_e1"}
    stats = resolve_target_stats(data_dir, ["lens_e1"])["lens_e1"]
    for i in range(12):
        name = _element_of(x.numpy()[i], train.images[i])
        e1, _ = d4.transform_spin2(train.targets["lens_e1"][i], train.targets["lens_e2"][i], name)
        assert y["lens_e1"].numpy()[i, 0] == pytest.approx(
            (e1 - stats["mean"]) / stats["std"], abs=1e-5
        )


def test_deterministic_with_seed_and_new_draws_each_epoch(data_dir):
    def build(seed):
        return build_dataset(
            data_dir,
            "train",
            targets=["theta_e_arcsec"],
            batch_size=5,
            augment="d4",
            shuffle=True,
            seed=seed,
        )

    first, again, other = build(1), build(1), build(2)
    a, b, c = _collect(first), _collect(again), _collect(other)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1]["theta_e_arcsec"], b[1]["theta_e_arcsec"])
    assert not np.array_equal(a[0], c[0])
    # A second pass over the same dataset (the next epoch) reshuffles and redraws.
    second_epoch = _collect(first)
    assert not np.array_equal(a[0], second_epoch[0])
    assert sorted(a[1]["theta_e_arcsec"]) == pytest.approx(
        sorted(second_epoch[1]["theta_e_arcsec"])
    )


def test_repeat_drop_remainder_and_normalization(data_dir):
    dataset = build_dataset(
        data_dir,
        "val",
        targets=["theta_e_arcsec"],
        batch_size=4,
        repeat=True,
        drop_remainder=True,
        normalization="peak_asinh",
        cache=False,
    )
    batches = list(dataset.take(5))  # 6 examples, repeated: more batches than one epoch holds
    assert all(x.shape == (4, 16, 16, 2) for x, _ in batches)
    assert float(tf.reduce_max(batches[0][0][..., 0])) == pytest.approx(1.0)


def test_numpy_sources_npz_and_examples(tmp_path, train):
    path = tmp_path / "set.npz"
    np.savez(
        path,
        images=train.images,
        theta_e_arcsec=train.targets["theta_e_arcsec"],
        lens_e1=train.targets["lens_e1"],
    )
    dataset = build_dataset(path, "test", targets=None, batch_size=5, augment="d4", shuffle=True)
    images, targets = _collect(dataset)
    assert images.shape == (12, 16, 16, 1) and set(targets) == {"theta_e_arcsec", "lens_e1"}
    # Stats of the source itself (no manifest): standardised values have mean 0, std 1.
    assert targets["theta_e_arcsec"].mean() == pytest.approx(0, abs=1e-5)
    assert targets["theta_e_arcsec"].std() == pytest.approx(1, abs=1e-4)
    # An Examples object works too; given stats are used as they are.
    dataset = build_dataset(
        train,
        targets=["log10_m_axion_ev"],
        batch_size=64,
        target_stats={"log10_m_axion_ev": {"mean": -23.0, "std": 0.5}},
    )
    _, targets = _collect(dataset)
    keep = np.isfinite(train.targets["log10_m_axion_ev"])
    np.testing.assert_allclose(
        targets["log10_m_axion_ev"], (train.targets["log10_m_axion_ev"][keep] + 23) / 0.5, rtol=1e-5
    )


def test_bad_options(data_dir, train):
    with pytest.raises(ConfigError, match="unknown normalization 'zscore'"):
        build_dataset(data_dir, "train", targets=None, batch_size=2, normalization="zscore")
    with pytest.raises(ConfigError, match="unknown augment 'd8'"):
        build_dataset(data_dir, "train", targets=None, batch_size=2, augment="d8")
    with pytest.raises(ConfigError, match="batch_size"):
        build_dataset(data_dir, "train", targets=None, batch_size=0)
    with pytest.raises(DataError, match="target_stats has no entry for lens_e1"):
        build_dataset(data_dir, "train", targets=["lens_e1"], batch_size=2, target_stats={})
    wide = train.subset(slice(None))
    wide.images = np.zeros((12, 16, 8, 1), np.float32)
    with pytest.raises(DataError, match="needs square images"):
        build_dataset(wide, targets=["theta_e_arcsec"], batch_size=2, augment="d4")

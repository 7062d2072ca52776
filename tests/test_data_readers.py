"""Readers for every source kind, every published .npy layout, and each bad-input error."""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest
from data_fixtures import (
    TARGETS,
    deeplense_entry,
    make_examples,
    pickle_bytes,
    write_dataset,
    write_pickled_npy,
)

from deeplense_tf.data import build_dataset, load_examples, read_manifest, validate_images
from deeplense_tf.data.pipeline import count_usable_examples
from deeplense_tf.data.readers import DEEPLENSE_TARGET, check_target_names
from deeplense_tf.data.safe_npy import load_npy, parse_array_pickle
from deeplense_tf.errors import DataError


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    return write_dataset(
        tmp_path_factory.mktemp("sim"),
        counts={"train": 12, "test": 5},
        shards={"train": 2, "test": 1},
    )


def _deeplense_file(path, image, mass):
    entry = np.empty(2, dtype=object)
    entry[0], entry[1] = image, mass
    np.save(path, entry)  # exactly how DeepLenseSim stores an example (a pickled object array)


# --- simulated data directory -------------------------------------------------------------


def test_simulated_directory_reads_split_in_shard_order(simulated):
    manifest = read_manifest(simulated)
    assert manifest["image_shape"] == [16, 16, 1]
    test = load_examples(simulated, split="test")
    images, targets, class_id, nuisance = make_examples(5, seed=1)  # the 'test' split
    assert test.images.shape == (5, 16, 16, 1) and test.images.dtype == np.float32
    np.testing.assert_array_equal(test.images, images)
    np.testing.assert_array_equal(test.class_id, class_id)
    np.testing.assert_array_equal(test.targets["lens_e1"], targets["lens_e1"])
    np.testing.assert_array_equal(test.nuisance["exposure_s"], nuisance["exposure_s"])
    assert set(test.targets) == set(TARGETS) and test.class_names == ("no_sub", "cdm", "axion")
    assert np.isnan(test.targets["log10_m_axion_ev"][0])  # undefined for no_sub

    train = load_examples(simulated, split="train", limit=7)
    images, *_ = make_examples(12, seed=0)
    order = list(range(0, 12, 2)) + list(range(1, 12, 2))  # shard 0 holds the even indices
    np.testing.assert_array_equal(train.images, images[order][:7])
    with pytest.raises(DataError, match="no split 'val'.*train, test"):
        load_examples(simulated, split="val")


# --- DeepLense .npy folders -----------------------------------------------------------------


def test_deeplense_npy_folder_with_class_folders(tmp_path):
    rng = np.random.default_rng(0)
    masses = [1e-23, 3e-24, 5e-23]
    for i, mass in enumerate(masses):
        (tmp_path / "axion").mkdir(exist_ok=True)
        _deeplense_file(tmp_path / "axion" / f"axion_sim_{i}.npy", rng.random((8, 8)), mass)
    (tmp_path / "no_sub").mkdir()
    np.save(tmp_path / "no_sub" / "sim_0.npy", rng.random((1, 8, 8)))  # image only, no label
    examples = load_examples(tmp_path)
    assert examples.images.shape == (4, 8, 8, 1)
    # Sorted paths: axion/* first, then no_sub/*.
    np.testing.assert_allclose(examples.targets[DEEPLENSE_TARGET][:3], np.log10(masses), rtol=1e-6)
    assert np.isnan(examples.targets[DEEPLENSE_TARGET][3])
    np.testing.assert_array_equal(examples.class_id, [2, 2, 2, 0])
    assert examples.metadata["exact_symmetries"] == ["identity", "rot180"]
    assert len(load_examples(tmp_path, limit=2)) == 2


def test_deeplense_split_subfolders(tmp_path):
    for split, count in (("train", 3), ("test", 2)):
        (tmp_path / split).mkdir()
        for i in range(count):
            _deeplense_file(tmp_path / split / f"{i}.npy", np.ones((4, 4), np.float32), 1e-23)
    assert len(load_examples(tmp_path, split="train")) == 3
    assert len(load_examples(tmp_path, split="test")) == 2
    with pytest.raises(DataError, match="no 'val' subfolder"):
        load_examples(tmp_path, split="val")


# Every layout the DeepLense repositories' files come in: (name, writer(path, image, mass)
# -> mass the file carries or None). `image` is [H, W].
def _object(image, mass, path):
    np.save(path, deeplense_entry(image, mass), allow_pickle=True)


_LAYOUTS = {
    "object [image, m]": lambda p, img, m: (_object(img, m, p), m)[1],
    "object row (1, 2)": lambda p, img, m: (np.save(p, deeplense_entry(img, m, row=True)), m)[1],
    "object [[1, H, W], m]": lambda p, img, m: (_object(img[None], m, p), m)[1],
    "object [[H, W, 1], m]": lambda p, img, m: (_object(img[..., None], m, p), m)[1],
    "object [flat H*W, m]": lambda p, img, m: (_object(img.ravel(), m, p), m)[1],
    "object [float32 image, float32 m]": lambda p, img, m: (
        _object(img.astype(np.float32), np.float32(m), p),
        float(np.float32(m)),
    )[1],
    "object [big-endian image, python float]": lambda p, img, m: (
        _object(img.astype(">f8"), float(m), p),
        m,
    )[1],
    "object [int16 image, 0-d m]": lambda p, img, m: (
        _object(np.round(img * 1000).astype(np.int16), np.array(m), p),
        m,
    )[1],
    "object [fortran image, m]": lambda p, img, m: (_object(np.asfortranarray(img), m, p), m)[1],
    "plain [H, W]": lambda p, img, m: (np.save(p, img), None)[1],
    "plain [1, H, W]": lambda p, img, m: (np.save(p, img[None]), None)[1],
    "plain [H, W, 1]": lambda p, img, m: (np.save(p, img[..., None]), None)[1],
    "plain flat H*W": lambda p, img, m: (np.save(p, img.ravel()), None)[1],
    "plain float32 fortran": lambda p, img, m: (
        np.save(p, np.asfortranarray(img.astype(np.float32))),
        None,
    )[1],
}


@pytest.mark.parametrize("layout", sorted(_LAYOUTS))
def test_every_published_layout_reads(tmp_path, layout):
    image = np.random.default_rng(1).random((6, 6)) * 4
    folder = tmp_path / "Model_II" / "axion"
    folder.mkdir(parents=True)
    mass = _LAYOUTS[layout](folder / "axion_sim_0.npy", image, 3e-23)
    examples = load_examples(tmp_path / "Model_II")
    assert examples.images.shape == (1, 6, 6, 1) and examples.images.dtype == np.float32
    expected = image
    if "int16" in layout:
        expected = np.round(image * 1000).astype(np.int16)
    np.testing.assert_allclose(examples.images[0, ..., 0], expected.astype(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(examples.class_id, [2])
    if mass is None:
        assert DEEPLENSE_TARGET not in examples.targets  # an unlabelled image
    else:
        np.testing.assert_allclose(examples.targets[DEEPLENSE_TARGET], [np.log10(mass)], rtol=1e-6)


@pytest.mark.parametrize("numpy1_names", [False, True], ids=["numpy2", "numpy1"])
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("row", [False, True], ids=["(2,)", "(1,2)"])
def test_genuine_numpy_pickles_read(tmp_path, protocol, numpy1_names, row):
    """What `pickle.dumps(np.array([img, m], dtype=object))` gives in each protocol, with
    numpy 2's module names and numpy 1.x's, reads with the strict parser."""
    image = np.random.default_rng(protocol).random((150, 150)).astype(np.float32)
    entry = deeplense_entry(image, np.float64(1.5e-24), row=row)
    payload = pickle_bytes(entry, protocol, numpy1_names)
    assert (b"numpy.core." in payload) == numpy1_names
    parsed = parse_array_pickle(payload)
    assert parsed.shape == entry.shape and parsed.dtype == object
    np.testing.assert_array_equal(parsed.reshape(2)[0], image)
    assert parsed.reshape(2)[1] == 1.5e-24
    path = write_pickled_npy(tmp_path / "axion_0.npy", entry, protocol, numpy1_names)
    examples = load_examples(path)
    np.testing.assert_array_equal(examples.images[0, ..., 0], image)
    np.testing.assert_allclose(examples.targets[DEEPLENSE_TARGET], [np.log10(1.5e-24)])


@pytest.mark.parametrize(
    "folders,expected",
    [
        (("no_sub", "cdm", "axion"), [0, 1, 2]),  # Models I-IV
        (("no", "sphere", "vort"), [0, 1, 2]),  # the classification test set
        (("no", "spherical", "vortex"), [0, 1, 2]),  # the domain-adaptation sets
        (("nosub", "subhalo", "Axion"), [0, 1, 2]),
        (("No Substructure", "CDM", "Vortex"), [0, 1, 2]),
        (("no_substructure", "sub", "axion"), [0, 1, 2]),  # a binary set's `sub`
        (("no-sub", "cdm", "vort"), [0, 1, 2]),
    ],
)
def test_class_folder_names(tmp_path, folders, expected):
    for index, folder in enumerate(folders):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / f"{index}.npy", np.ones((4, 4), np.float32))
    examples = load_examples(tmp_path)
    order = np.argsort([str(tmp_path / f / f"{i}.npy") for i, f in enumerate(folders)])
    np.testing.assert_array_equal(examples.class_id, np.asarray(expected)[order])


def test_unknown_class_folder_leaves_class_id_unknown(tmp_path):
    (tmp_path / "lenses").mkdir()
    np.save(tmp_path / "lenses" / "0.npy", np.ones((4, 4), np.float32))
    assert load_examples(tmp_path).class_id is None


class _RunsCommand:
    """What an attacker would pickle: unpickling calls os.system(...)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_RunsCommand(f"touch {marker}"), protocol=3)
    # A valid .npy header that announces an object array, followed by the malicious pickle.
    path = tmp_path / "evil.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "|O", "fortran_order": False, "shape": (2,)}
        )
        handle.write(payload)
    with pytest.raises(DataError, match=r"evil\.npy.*refusing to load (posix|os|nt)\.system"):
        load_npy(path)
    assert not marker.exists()
    # The same file inside a DeepLense folder fails the same way.
    with pytest.raises(DataError, match="evil.npy"):
        load_examples(tmp_path)
    assert not marker.exists()


def test_restricted_unpickler_still_reads_real_files(tmp_path):
    image = np.random.default_rng(0).random((5, 5))
    _deeplense_file(tmp_path / "a.npy", image, np.float64(2e-23))
    loaded = load_npy(tmp_path / "a.npy")
    np.testing.assert_array_equal(loaded[0], image)
    assert loaded[1] == 2e-23


@pytest.mark.parametrize(
    "content,message",
    [
        (["only-one"], "item is str; only numeric arrays and numbers"),
        ([np.ones((4, 4)), 1e-23, 5], "than the 2 allowed"),
        ([np.ones((4, 4)), "heavy"], "item is str"),
        ([np.ones((4, 4)), -1.0], "positive axion mass"),
        ([np.ones((2, 4, 4)), 1e-23], r"must be \[H, W\], \[1, H, W\], \[H, W, 1\] or a flat"),
        ([np.ones(15), 1e-23], r"flat image must have H \* W values with H == W, got 15"),
        ([np.ones((4, 4))], r"of shape \(2,\) or \(1, 2\), got shape \(1,\)"),
        (["text", 1e-23], "item is str"),
        ([1e-23, np.ones((4, 4))], "numeric image array first"),
    ],
)
def test_npy_that_is_not_image_label_is_an_error(tmp_path, content, message):
    entry = np.empty(len(content), dtype=object)
    for i, value in enumerate(content):
        entry[i] = value
    np.save(tmp_path / "bad.npy", entry)
    with pytest.raises(DataError, match=message) as info:
        load_examples(tmp_path)
    assert "bad.npy" in str(info.value)


def test_npy_with_nan_pixels_names_the_file(tmp_path):
    _deeplense_file(tmp_path / "a.npy", np.ones((4, 4)), 1e-23)
    bad = np.ones((4, 4))
    bad[1, 2] = np.inf
    _deeplense_file(tmp_path / "b.npy", bad, 1e-23)
    with pytest.raises(DataError, match=r"b\.npy.*NaN or infinite.*example 1"):
        load_examples(tmp_path)


def test_npy_of_different_sizes_is_an_error(tmp_path):
    _deeplense_file(tmp_path / "a.npy", np.ones((4, 4)), 1e-23)
    _deeplense_file(tmp_path / "b.npy", np.ones((5, 5)), 1e-23)
    with pytest.raises(DataError, match=r"b\.npy: image is 5x5 but .*a\.npy is 4x4"):
        load_examples(tmp_path)


# --- .npz and .h5 ---------------------------------------------------------------------------


def test_npz_reader(tmp_path):
    images, targets, class_id, nuisance = make_examples(6)
    path = tmp_path / "set.npz"
    np.savez(
        path,
        images=images[..., 0],  # [N, H, W] is accepted too
        theta_e_arcsec=targets["theta_e_arcsec"],
        **{"target/lens_e1": targets["lens_e1"], "nuisance/exposure_s": nuisance["exposure_s"]},
        class_id=class_id,
        metadata=json.dumps({"exact_symmetries": ["identity", "rot90"]}),
    )
    examples = load_examples(path, limit=4)
    assert examples.images.shape == (4, 16, 16, 1)
    np.testing.assert_array_equal(examples.images, images[:4])
    assert set(examples.targets) == {"theta_e_arcsec", "lens_e1"}
    np.testing.assert_array_equal(examples.targets["lens_e1"], targets["lens_e1"][:4])
    np.testing.assert_array_equal(examples.nuisance["exposure_s"], nuisance["exposure_s"][:4])
    np.testing.assert_array_equal(examples.class_id, class_id[:4])
    assert examples.metadata["exact_symmetries"] == ["identity", "rot90"]
    assert examples.metadata["target_kinds"]["lens_e1"] == {"kind": "scalar"}


def test_h5_reader(tmp_path):
    images, targets, class_id, nuisance = make_examples(5)
    path = tmp_path / "set.h5"
    with h5py.File(path, "w") as handle:
        handle["images"] = images
        handle["target/theta_e_arcsec"] = targets["theta_e_arcsec"]
        handle["log10_m_axion_ev"] = targets["log10_m_axion_ev"]
        handle["nuisance/exposure_s"] = nuisance["exposure_s"]
        handle["class_id"] = class_id
        handle["class_names"] = np.array([b"no_sub", b"cdm", b"axion"])
        handle.attrs["metadata"] = json.dumps({"pixel_scale_arcsec": 0.1})
    examples = load_examples(path)
    np.testing.assert_array_equal(examples.images, images)
    np.testing.assert_array_equal(examples.targets["theta_e_arcsec"], targets["theta_e_arcsec"])
    np.testing.assert_array_equal(examples.class_id, class_id)
    assert examples.class_names == ("no_sub", "cdm", "axion")
    assert examples.metadata["pixel_scale_arcsec"] == 0.1
    assert len(load_examples(path, limit=2)) == 2


def test_npz_and_h5_errors(tmp_path):
    np.savez(tmp_path / "noimages.npz", pixels=np.ones((2, 4, 4)))
    with pytest.raises(DataError, match=r"noimages\.npz: no 'images' array \(found pixels\)"):
        load_examples(tmp_path / "noimages.npz")
    np.savez(tmp_path / "short.npz", images=np.ones((3, 4, 4)), theta_e_arcsec=np.ones(2))
    with pytest.raises(
        DataError, match=r"short\.npz: 'theta_e_arcsec' must be numbers of shape \[3\]"
    ):
        load_examples(tmp_path / "short.npz")
    np.savez(tmp_path / "rgb.npz", images=np.ones((3, 4, 4, 3)))
    with pytest.raises(DataError, match=r"rgb\.npz: images must have one channel"):
        load_examples(tmp_path / "rgb.npz")
    np.savez(tmp_path / "pickled.npz", images=np.ones((2, 4, 4)), names=np.array([{}, {}]))
    with pytest.raises(DataError, match=r"pickled\.npz: cannot read 'names' without pickle"):
        load_examples(tmp_path / "pickled.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"junk\.npz: not a readable \.npz"):
        load_examples(tmp_path / "junk.npz")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"junk\.h5: not a readable HDF5"):
        load_examples(tmp_path / "junk.h5")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"data\.csv: unsupported data file"):
        load_examples(tmp_path / "data.csv")
    with pytest.raises(DataError, match="no such file or directory"):
        load_examples(tmp_path / "missing.npz")


# --- validation -------------------------------------------------------------------------------


def test_validate_images():
    good = np.ones((2, 4, 4), np.float64)
    out = validate_images(good, expected_hw=(4, 4), source="x")
    assert out.shape == (2, 4, 4, 1) and out.dtype == np.float32
    with pytest.raises(
        DataError,
        match=r"batch\.npy: images must be \[N, H, W\] or \[N, H, W, 1\], got shape \(4, 4\)",
    ):
        validate_images(np.ones((4, 4)), source="batch.npy")
    with pytest.raises(DataError, match="images are 4x4 pixels but 64x64 are expected"):
        validate_images(good, expected_hw=(64, 64))
    bad = np.ones((5, 4, 4, 1))
    bad[3, 0, 0, 0] = np.nan
    bad[4, 1, 1, 0] = -np.inf
    with pytest.raises(DataError, match=r"req: example 3 has NaN or infinite pixels \(2 of 5"):
        validate_images(bad, source="req")
    with pytest.raises(DataError, match="real numbers"):
        validate_images(np.array([["a"]]))
    with pytest.raises(DataError, match="no images"):
        validate_images(np.ones((0, 4, 4)))


def test_unknown_target_lists_valid_ones(simulated):
    with pytest.raises(
        DataError, match=r"unknown target 'mass'; valid targets: theta_e_arcsec, .*log10_m_axion_ev"
    ):
        build_dataset(simulated, "train", targets=["mass"], batch_size=4)
    assert check_target_names(None, ["a", "b"], "s") == ["a", "b"]


def test_missing_and_corrupt_manifest(tmp_path):
    with pytest.raises(DataError, match=r"empty: no manifest\.json .*simulate"):
        (tmp_path / "empty").mkdir()
        load_examples(tmp_path / "empty")
    with pytest.raises(DataError, match=r"empty: no manifest\.json"):
        read_manifest(tmp_path / "empty")
    with pytest.raises(DataError, match="no such data directory"):
        read_manifest(tmp_path / "nowhere")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"broken/manifest\.json: corrupt manifest"):
        load_examples(tmp_path / "broken")
    (tmp_path / "broken" / "manifest.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(DataError, match="missing image_shape, targets, splits"):
        read_manifest(tmp_path / "broken")
    (tmp_path / "broken" / "manifest.json").write_text(
        json.dumps({"format_version": 99, "image_shape": [4, 4, 1], "targets": [], "splits": {}})
    )
    with pytest.raises(DataError, match="format_version 99 is newer"):
        read_manifest(tmp_path / "broken")


def _damaged_copy(simulated, tmp_path, damage):
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(simulated, copy)
    shard = copy / "test-00000-of-00001.tfrecord"
    shard.write_bytes(damage(shard.read_bytes()))
    return copy, shard


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda b: b[: len(b) - 100], "corrupt or truncated shard"),
        (lambda b: b[:200] + bytes([b[200] ^ 0xFF]) + b[201:], "corrupt or truncated shard"),
    ],
    ids=["truncated", "flipped-byte"],
)
def test_corrupt_or_truncated_shard_names_the_file(simulated, tmp_path, damage, message):
    copy, shard = _damaged_copy(simulated, tmp_path, damage)
    with pytest.raises(DataError, match=message) as info:
        load_examples(copy, split="test")
    assert str(shard) in str(info.value)
    with pytest.raises(DataError, match=message) as info:
        build_dataset(copy, "test", targets=["theta_e_arcsec"], batch_size=2)
    assert str(shard) in str(info.value)


def _cut_test_shard(simulated, tmp_path, keep: int, extra_bytes: int = 0):
    """A copy whose test shard keeps its first `keep` records (plus `extra_bytes` of the next)."""
    import tensorflow as tf

    records = [
        r.numpy() for r in tf.data.TFRecordDataset(str(simulated / "test-00000-of-00001.tfrecord"))
    ]
    copy, shard = _damaged_copy(simulated, tmp_path, lambda b: b)
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for record in records[:keep]:
            writer.write(record)
    if extra_bytes:
        whole = shard.read_bytes()
        tail = simulated.joinpath("test-00000-of-00001.tfrecord").read_bytes()[len(whole) :]
        shard.write_bytes(whole + tail[:extra_bytes])
    return copy, shard


def test_shard_cut_at_a_record_boundary_is_caught_by_the_count(simulated, tmp_path):
    """TFRecord has no end marker: only the manifest's count shows the missing records."""
    import tensorflow as tf

    copy, _ = _cut_test_shard(simulated, tmp_path, keep=3)
    manifest = read_manifest(copy)
    message = r"split 'test' has 3 records in its shards but the manifest says 5"
    with pytest.raises(DataError, match=message):
        build_dataset(copy, "test", targets=["theta_e_arcsec"], batch_size=2)
    with pytest.raises(DataError, match=message):
        load_examples(copy, split="test")
    with pytest.raises(DataError, match=message):
        load_examples(copy, split="test", limit=4)  # asked for more than the shards hold
    assert len(load_examples(copy, split="test", limit=3)) == 3  # a prefix cannot tell
    with pytest.raises(DataError, match=message):
        count_usable_examples(copy, manifest, "test", ["theta_e_arcsec"])
    # Without the up-front read, the stream itself stops at the short split.
    stats = {"theta_e_arcsec": {"mean": 1.0, "std": 0.2}}
    dataset = build_dataset(
        copy, "test", targets=["theta_e_arcsec"], batch_size=2, verify=False, target_stats=stats
    )
    with pytest.raises(tf.errors.FailedPreconditionError, match="expected to contain 5"):
        list(dataset)
    assert (
        count_usable_examples(simulated, read_manifest(simulated), "test", ["theta_e_arcsec"]) == 5
    )
    # log10_m_axion_ev is defined for the axion class only (indices 2 of 0..4)
    assert (
        count_usable_examples(simulated, read_manifest(simulated), "test", [DEEPLENSE_TARGET]) == 1
    )


def test_shard_cut_in_the_middle_of_a_record_names_the_shard(simulated, tmp_path):
    copy, shard = _cut_test_shard(simulated, tmp_path, keep=3, extra_bytes=30)
    for read in (
        lambda: load_examples(copy, split="test"),
        lambda: build_dataset(copy, "test", targets=["theta_e_arcsec"], batch_size=2),
    ):
        with pytest.raises(DataError, match="corrupt or truncated shard") as info:
            read()
        assert str(shard) in str(info.value)
    with pytest.raises(DataError, match="split 'test' has a corrupt or truncated shard"):
        count_usable_examples(copy, read_manifest(copy), "test", ["theta_e_arcsec"])


def test_missing_shard(simulated, tmp_path):
    copy, shard = _damaged_copy(simulated, tmp_path, lambda b: b)
    shard.unlink()
    with pytest.raises(
        DataError, match=r"test-00000-of-00001\.tfrecord: shard listed in the manifest is missing"
    ):
        load_examples(copy, split="test")


def test_records_with_wrong_image_size_or_nan_pixels(tmp_path):
    def plant(split, images):
        images = images.copy()
        images[2, 3, 4, 0] = np.nan
        return images

    nan_dir = write_dataset(tmp_path / "nan", counts={"test": 4}, images_override=plant)
    shard = nan_dir / "test-00000-of-00001.tfrecord"
    with pytest.raises(DataError, match=rf"{shard}: example 2 has NaN or infinite pixels"):
        load_examples(nan_dir, split="test")
    with pytest.raises(DataError, match=rf"{shard}: example 2 has NaN or infinite pixels"):
        build_dataset(nan_dir, "test", targets=["theta_e_arcsec"], batch_size=2)
    with pytest.raises(DataError, match="no target_stats for theta_e_arcsec and no train split"):
        build_dataset(nan_dir, "test", targets=["theta_e_arcsec"], batch_size=2, verify=False)

    wrong = write_dataset(tmp_path / "wrong", counts={"test": 3}, size=8)
    manifest = json.loads((wrong / "manifest.json").read_text())
    manifest["image_shape"] = [16, 16, 1]  # the shards hold 8x8 images
    (wrong / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        DataError,
        match=r"example 0 has 64 pixel values but the manifest's image_shape \[16, 16, 1\] needs 256",
    ):
        load_examples(wrong, split="test")
    with pytest.raises(DataError, match="example 0 has 64 pixel values"):
        build_dataset(wrong, "test", targets=["theta_e_arcsec"], batch_size=2)

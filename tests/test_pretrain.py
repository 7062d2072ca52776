"""Self-supervised pretraining (`deeplense pretrain`): the VICReg terms on known inputs, the
lens-safe views (D4, blur, noise; unsafe options refused), the config rules, a tiny run
end to end through the CLI that `cluster` reads and `train --set training.init_from`
initialises from, resume, and hostile embeddings files. Tiny data (16x16 blobs) and a
tiny CNN keep it to seconds.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import tracemalloc
import zipfile

import numpy as np
import pytest
from data_fixtures import write_dataset

from deeplense_tf.errors import ConfigError, DataError, RunError

TINY_MODEL = {
    "data.path": None,
    "model.name": "cnn",
    "model.crop": None,
    "model.options": {"width": 4, "blocks": 2, "convs_per_block": 1},
    "pretrain.projector": [16, 16],
    "training.epochs": 2,
    "training.batch_size": 8,
    "training.learning_rate": 3e-3,
    "training.bn_recalibration_batches": 1,
}
MODEL_SETS = ["--set", "model.options={width: 4, blocks: 2, convs_per_block: 1}",
              "--set", "model.crop=null"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("pretrain-data"),
                         counts={"train": 24, "val": 8, "test": 9})


# --- the objective ------------------------------------------------------------------------


def _reference_terms(za, zb, eps=1e-4):
    """The paper's formulas in numpy, written out independently of models/vicreg.py."""
    def branch(z):
        c = z - z.mean(0)
        cov = c.T @ c / (len(z) - 1)
        std = np.sqrt(np.diag(cov) + eps)
        off = cov - np.diag(np.diag(cov))
        return np.mean(np.maximum(0, 1 - std)), (off ** 2).sum() / z.shape[1]

    (va, ca), (vb, cb) = branch(za), branch(zb)
    return {"invariance": np.mean((za - zb) ** 2), "variance": (va + vb) / 2, "covariance": ca + cb}


def test_vicreg_terms_on_known_inputs():
    from deeplense_tf.models.vicreg import vicreg_loss, vicreg_terms

    # All images at one point: no invariance or covariance to pay, the full variance penalty.
    collapsed = np.tile(np.array([[1.0, 2.0, 3.0, 4.0]], np.float32), (8, 1))
    terms = {k: float(v) for k, v in vicreg_terms(collapsed, collapsed).items()}
    assert terms["invariance"] == 0.0 and terms["covariance"] == 0.0
    assert terms["variance"] == pytest.approx(1 - np.sqrt(1e-4), rel=1e-6)
    assert terms["std"] == pytest.approx(0.01, rel=1e-4)

    rng = np.random.default_rng(0)
    za = rng.normal(size=(32, 6)).astype(np.float32) * 0.5
    same = {k: float(v) for k, v in vicreg_terms(za, za).items()}
    assert same["invariance"] == 0.0  # identical views: nothing to make invariant
    zb = za + rng.normal(size=za.shape).astype(np.float32) * 0.1
    terms = {k: float(v) for k, v in vicreg_terms(za, zb).items()}
    for name, value in _reference_terms(za.astype(np.float64), zb.astype(np.float64)).items():
        assert terms[name] == pytest.approx(value, rel=1e-4), name
    assert float(vicreg_loss(terms)) == pytest.approx(
        25 * terms["invariance"] + 25 * terms["variance"] + terms["covariance"], rel=1e-6)
    assert float(vicreg_loss(terms, {"covariance": 0.0})) == pytest.approx(
        25 * terms["invariance"] + 25 * terms["variance"], rel=1e-6)

    # Two copies of one unit-variance dimension: each branch pays (1^2 + 1^2) / 2.
    x = rng.normal(size=(64, 1))
    x = (x - x.mean()) / x.std(ddof=1)
    twin = np.concatenate([x, x], axis=1).astype(np.float32)
    terms = vicreg_terms(twin, twin)
    assert float(terms["covariance"]) == pytest.approx(2.0, rel=1e-4)
    assert float(terms["variance"]) == pytest.approx(0.0, abs=1e-4)


# --- the views ----------------------------------------------------------------------------


def _ring(size=32, radius=8.0, width=1.0):
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(x, y)
    return np.exp(-0.5 * ((r - radius) / width) ** 2).astype(np.float32)[..., None], r


def test_views_are_d4_elements_blur_and_noise_only():
    import tensorflow as tf

    from deeplense_tf.data import augment
    from deeplense_tf.data.views import blur, make_view

    rng = np.random.default_rng(1)
    images = rng.random((40, 8, 8, 1)).astype(np.float32)
    seed = tf.constant([3, 4], tf.int64)
    plain = make_view(images, seed, d4=True).numpy()
    elements = set()
    for image, view in zip(images, plain):
        matches = [n for n in augment.D4_ELEMENTS
                   if np.array_equal(augment.transform_image(image[None], n)[0], view)]
        assert matches, "a view without blur and noise must be a D4 element of its image"
        elements.add(matches[0])
    assert len(elements) >= 6  # a random element per image, not one for the batch
    np.testing.assert_array_equal(make_view(images, seed, d4=True).numpy(), plain)  # stateless
    assert not np.array_equal(make_view(images, tf.constant([3, 5], tf.int64), d4=True).numpy(), plain)
    np.testing.assert_array_equal(make_view(images, seed, d4=False).numpy(), images)

    # Blur keeps the flux and the ring's radius (what the Einstein radius is read from).
    ring, r = _ring()
    blurred = blur(ring[None], tf.constant([1.5])).numpy()[0]
    assert blurred.sum() == pytest.approx(ring.sum(), rel=1e-3)
    assert blurred.max() < ring.max()
    bins = np.round(r).astype(int)

    def peak_radius(image):
        profile = np.bincount(bins.ravel(), image.ravel()) / np.maximum(np.bincount(bins.ravel()), 1)
        return int(np.argmax(profile))

    assert peak_radius(blurred[..., 0]) == peak_radius(ring[..., 0]) == 8
    np.testing.assert_allclose(blur(ring[None], tf.constant([0.0])).numpy()[0], ring, atol=1e-6)

    # Noise: zero mean, at most noise_std of the image's own pixel std; in a tf.function too.
    many = np.tile(ring[None], (16, 1, 1, 1))
    view = tf.function(lambda x: make_view(x, seed, d4=False, noise_std=0.2))(many).numpy()
    residual = view - many
    assert abs(residual.mean()) < 0.01
    assert 0 < residual.std(axis=(1, 2, 3)).max() <= 0.2 * ring.std() * 1.2


@pytest.mark.parametrize("option", ["crop", "random_crop", "zoom", "rescale", "resize", "shift"])
def test_unsafe_view_options_are_refused(option):
    from deeplense_tf.data.views import check_view_options
    from deeplense_tf.training.pretrain import load_pretrain_config

    with pytest.raises(ConfigError, match="not a lens-safe view: it changes the apparent Einstein radius"):
        check_view_options({option: 48})
    with pytest.raises(ConfigError, match=f"pretrain.views.{option} is not a lens-safe view"):
        load_pretrain_config(overrides={f"pretrain.views.{option}": 0.9})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pretrain.views.colour_jitter": 0.1}, "not a view option; choose from d4, blur_sigma_px"),
        ({"pretrain.views": {"d4": False, "blur_sigma_px": 0, "noise_std": 0}}, "turns every view off"),
        ({"pretrain.views.noise_std": -1}, "must be a number >= 0"),
        ({"pretrain.projector": []}, "list of widths"),
        ({"pretrain.objective": "simclr"}, "must be one of vicreg"),
        ({"pretrain.temperature": 0.1}, "unknown config key pretrain.temperature"),
        ({"data.augment": "d4"}, "makes its own views"),
        ({"data.targets": ["theta_e_arcsec"]}, "reads no targets"),
        ({"training.init_from": "runs/x"}, "starts from random weights"),
        ({"data.train_limit": 100}, "reads every train image"),
        ({"training.monitor": "val_mae"}, "monitors val_loss"),
        ({"training.epochs": 0}, "training.epochs must be >= 1"),
    ],
)
def test_pretrain_config_errors_name_the_key(overrides, message):
    from deeplense_tf.training.pretrain import load_pretrain_config

    with pytest.raises(ConfigError, match=message):
        load_pretrain_config(overrides=overrides)


def test_pretrain_config_defaults_and_file(tmp_path):
    from deeplense_tf.training.pretrain import PRETRAIN_DEFAULTS, load_pretrain_config

    config = load_pretrain_config()
    assert config["pretrain"] == PRETRAIN_DEFAULTS and config["data"]["augment"] == "none"
    path = tmp_path / "p.yaml"
    path.write_text("pretrain:\n  views: {noise_std: 0.3}\ntraining: {epochs: 5}\n")
    config = load_pretrain_config(path, {"pretrain.projector": [8, 8]})
    assert config["pretrain"]["views"]["noise_std"] == 0.3 and config["training"]["epochs"] == 5
    assert config["pretrain"]["projector"] == [8, 8] and config["pretrain"]["views"]["d4"] is True
    path.write_text("pretrain:\n  views: {crop: 40}\n")
    with pytest.raises(ConfigError, match=f"config {path}: pretrain.views.crop is not a lens-safe"):
        load_pretrain_config(path)


def test_committed_pretrain_config_fits_the_benchmark_regressor():
    from pathlib import Path

    from deeplense_tf.training.config import load_config
    from deeplense_tf.training.pretrain import load_pretrain_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    config = load_pretrain_config(configs / "pretrain-model2.yaml")
    assert config["pretrain"]["views"]["d4"] and config["training"]["time_budget_minutes"] == 45
    # Same model section as the regressor it is compared with and can initialise.
    regressor = load_config(configs / "benchmark-model2-resnet.yaml")
    assert config["model"] == regressor["model"]
    header = (configs / "pretrain-model2.yaml").read_text()
    for command in ("deeplense pretrain --config configs/pretrain-model2.yaml",
                    "deeplense cluster --run runs/pretrain-model2",
                    "--set training.init_from=runs/pretrain-model2"):
        assert command in header


# --- end to end ---------------------------------------------------------------------------


def _main(argv):
    from deeplense_tf import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _history(run_dir):
    with open(run_dir / "history.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain-run") / "encoder"
    code, printed, err = _main([
        "pretrain", "--data", data_dir, "--model", "cnn", "--out", out, "--epochs", 2,
        "--batch-size", 8, *MODEL_SETS, "--set", "pretrain.projector=[16, 16]",
        "--set", "training.bn_recalibration_batches=1", "--set", "training.learning_rate=3e-3",
    ])
    assert code == 0, err
    return out, printed


def test_pretrain_writes_an_encoder_run(pretrained):
    from deeplense_tf.runs import Run

    out, printed = pretrained
    assert "encoder ready" in printed and "epoch 2/2" in printed
    for name in ("model.keras", "config.yaml", "target_stats.json", "data_manifest.json",
                 "run.json", "history.csv", "metrics.json", "plots/history.png"):
        assert (out / name).is_file(), name
    assert not (out / "backup").exists()
    info = json.loads((out / "run.json").read_text())
    assert info["head"] == "projector" and info["targets"] == [] and info["complete"]
    assert info["objective"] == "vicreg" and info["input_shape"] == [16, 16, 1]
    rows = _history(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("loss", "invariance", "variance", "covariance", "std", "val_loss", "val_std"):
        assert np.isfinite(rows[-1][key]), key
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pretrain"]["projection_dim"] == 16 and metrics["pretrain"]["embedding_dim"] > 0
    assert set(metrics["pretrain"]["validation"]) >= {"invariance", "variance", "covariance", "std"}
    run = Run.load(out)
    assert run.targets == [] and run.head == "projector"
    assert run.embedding_model().output.shape[-1] == metrics["pretrain"]["embedding_dim"]
    with pytest.raises(RunError, match="self-supervised encoder .* predicts no targets"):
        run.predict(np.zeros((2, 16, 16, 1), np.float32))
    from deeplense_tf.data import load_examples
    from deeplense_tf.runs.run import check_examples_fit

    with pytest.raises(RunError, match="self-supervised encoder"):  # what evaluate checks first
        check_examples_fit(run, load_examples(run.data_path(), "test"))


def test_cluster_reads_the_encoder_run(pretrained, data_dir, tmp_path):
    out, _ = pretrained
    code, printed, err = _main(["cluster", "--run", out, "--data", data_dir, "--out", tmp_path / "c",
                                "--k", 3, "--reduce", "pca"])
    assert code == 0, err
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert set(summary["feature_sets"]) == {"trained", "random_weights", "raw_pixels"}
    assert summary["layer"] == "embedding" and summary["n"] == 9
    assert "class ARI" in printed and "random_weights ARI" in printed


def test_export_refuses_the_encoder_run_in_one_line(pretrained, tmp_path):
    out, _ = pretrained
    code, _, err = _main(["export", "--run", out, "--out", tmp_path / "export"])
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "a pretrained encoder (projector head) predicts no target" in err
    assert not (tmp_path / "export").exists()


def test_train_initialises_from_the_encoder_run(pretrained, data_dir, tmp_path):
    import keras

    from deeplense_tf.models import encoder_layers, head_layers

    out, _ = pretrained
    ft = tmp_path / "finetuned"
    code, printed, err = _main([
        "train", "--data", data_dir, "--model", "cnn", "--out", ft, "--epochs", 1,
        "--batch-size", 8, *MODEL_SETS, "--set", f"training.init_from={out}",
        "--set", "training.freeze_encoder_epochs=1", "--set", "data.targets=[theta_e_arcsec]",
        "--set", "training.bn_recalibration_batches=0",
    ])
    assert code == 0, err
    assert json.loads((ft / "run.json").read_text())["init_from"] == str(out.resolve())
    source = keras.saving.load_model(out / "model.keras")
    tuned = keras.saving.load_model(ft / "model.keras")
    source_layers = {layer.name: layer for layer in source.layers}
    copied = [layer for layer in encoder_layers(tuned) if layer.weights]
    assert copied
    for layer in copied:  # frozen for the one epoch: still the pretrained weights
        for a, b in zip(layer.get_weights(), source_layers[layer.name].get_weights()):
            np.testing.assert_array_equal(a, b)
    assert not any(layer.name.startswith("projector") for layer in tuned.layers)
    assert all(layer.name not in source_layers for layer in head_layers(tuned))


def test_pretrain_resumes_where_it_stopped(data_dir, tmp_path):
    from deeplense_tf.training.pretrain import load_pretrain_config, pretrain

    config = load_pretrain_config(overrides={**TINY_MODEL, "data.path": str(data_dir)})
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        pretrain(config, tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt), contextlib.redirect_stdout(io.StringIO()):
        pretrain(config, tmp_path / "cut", progress=False, _interrupt_after=1)
    assert (tmp_path / "cut" / "backup").is_dir()
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        pretrain(config, tmp_path / "cut", progress=False)
    assert "resuming" in printed.getvalue()
    whole, cut = _history(tmp_path / "whole"), _history(tmp_path / "cut")
    assert [r["epoch"] for r in cut] == [1, 2]
    # The same views on the resumed run (stateless seeds from the step counter).
    for a, b in zip(whole, cut):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    with pytest.raises(RunError, match="holds a finished run"):
        pretrain(config, tmp_path / "cut", progress=False)


# --- source twins ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twin_dirs(tmp_path_factory):
    """A tiny simulated Model II mix and its source twin (the same command, --source-seed 1)."""
    root = tmp_path_factory.mktemp("twins")
    command = ["simulate", "--preset", "deeplense-model-2", "--classes", "mix", "--num", 40,
               "--val", 0.2, "--test", 0.2, "--seed", 3, "--workers", 1, "--no-progress"]
    for name, extra in (("original", []), ("twin", ["--source-seed", 1])):
        code, _, err = _main([*command, *extra, "--out", root / name])
        assert code == 0, err
    assert "source seed 1" in err
    return root / "original", root / "twin"


def test_twin_pairs_are_one_lens_with_two_sources(twin_dirs, tmp_path):
    from deeplense_tf.data.unlabelled import check_twins, image_dataset

    original, twin = twin_dirs
    check_twins(original, twin)
    pairs = np.concatenate([p for p, _ in image_dataset(original, "val", batch_size=3, twin=twin)])
    alone = np.concatenate([x for x, _ in image_dataset(original, "val", batch_size=3)])
    others = np.concatenate([x for x, _ in image_dataset(twin, "val", batch_size=3)])
    assert pairs.shape == (8, 2, 64, 64, 1)
    np.testing.assert_array_equal(pairs[:, 0], alone)
    np.testing.assert_array_equal(pairs[:, 1], others)
    assert all(not np.array_equal(a, b) for a, b in pairs)  # another source for every lens
    # Shuffled, an image stays beside its own twin.
    shuffled = np.concatenate([p for p, _ in image_dataset(original, "val", batch_size=4,
                                                           twin=twin, shuffle=True, seed=1)])
    order = [int(np.flatnonzero([np.array_equal(x, a) for a in alone])[0]) for x in shuffled[:, 0]]
    assert order != sorted(order)
    np.testing.assert_array_equal(shuffled[:, 1], others[order])

    with pytest.raises(DataError, match="same source seed"):
        check_twins(original, original)
    other = tmp_path / "other-seed"
    code, _, err = _main(["simulate", "--preset", "deeplense-model-2", "--classes", "mix",
                          "--num", 40, "--val", 0.2, "--test", 0.2, "--seed", 4, "--workers", 1,
                          "--source-seed", 1, "--no-progress", "--out", other])
    assert code == 0, err
    with pytest.raises(DataError, match="not a source twin.*seed differs"):
        check_twins(original, other)


def test_pretrain_on_source_twins(twin_dirs, tmp_path):
    from deeplense_tf.runs import Run

    original, twin = twin_dirs
    out = tmp_path / "encoder"
    # With the twin the views may all be off: image and twin differ by their source.
    code, _, err = _main([
        "pretrain", "--data", original, "--twin-data", twin, "--model", "cnn", "--out", out,
        "--epochs", 1, "--batch-size", 8, *MODEL_SETS, "--set", "pretrain.projector=[16, 16]",
        "--set", "training.bn_recalibration_batches=1",
        "--set", "pretrain.views={d4: false, blur_sigma_px: 0, noise_std: 0}",
    ])
    assert code == 0, err
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["pretrain"]["twin_data"] == str(twin.resolve())
    assert np.isfinite(_history(out)[0]["val_loss"])
    assert Run.load(out).head == "projector"

    code, _, err = _main(["pretrain", "--data", original, "--twin-data", original, "--model",
                          "cnn", "--out", tmp_path / "refused", "--epochs", 1, *MODEL_SETS])
    assert code != 0 and "same source seed" in err
    assert not (tmp_path / "refused").exists()


# --- embeddings files ---------------------------------------------------------------------


def _npz(path, members: dict):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, content in members.items():
            archive.writestr(f"{key}.npy", content)
    return path


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _header(descr, shape) -> bytes:
    text = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode("latin-1")
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"features": _header("<f4", (10**9, 64)) + bytes(256)}, "needs 256000000000 bytes"),
        ({"features": _npy(np.zeros((4, 3), np.float32)),
          "class_id": _npy(np.array([1, 2], dtype=object))}, "without pickle"),
        ({"features": _npy(np.zeros((4, 3), np.float32)), "class_id": _npy(np.arange(3))},
         "not one value for each of the 4 feature rows"),
        ({"features": _npy(np.zeros(4, np.float32))}, r"float \[N, D\] array"),
        ({"layer": _npy(np.array("embedding"))}, "no 'features' array"),
    ],
)
def test_load_embeddings_refuses_hostile_files(tmp_path, members, message):
    from deeplense_tf.clustering.embedding import load_embeddings

    path = _npz(tmp_path / "e.npz", members)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=message) as info:
            load_embeddings(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(info.value).startswith(f"{path}") and "\n" not in str(info.value)
    assert peak < 16 << 20  # nothing the header declares is allocated

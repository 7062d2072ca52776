"""`deeplense cluster` and `cluster_run` end to end on a tiny run folder.

The run folder holds exactly the files `Run.load` reads, written from a freshly built tiny
CNN (seconds); the slow test clusters a run made by the real `train` in smoke mode. Data:
a 16x16 simulated-style data set (tests/data_fixtures.py) with all three classes.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from data_fixtures import NUISANCES, TARGETS, write_dataset

from deeplense_tf.cli import main

TARGET = "log10_m_axion_ev"
SHAPE = (16, 16, 1)
N_TEST = 30
MODEL_SECTION = {"name": "cnn", "head": "gaussian", "normalization": "peak_asinh", "crop": None,
                 "options": {"width": 4, "blocks": 2, "convs_per_block": 1}}


def _write_run(folder, model, targets):
    folder.mkdir()
    model.save(folder / "model.keras")
    config = {"seed": 0, "data": {"path": "unused"}, "model": MODEL_SECTION}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "target_stats.json").write_text(
        json.dumps({t: {"mean": -23.0, "std": 0.58} for t in targets}))
    (folder / "run.json").write_text(json.dumps({
        "format_version": 1, "deeplense_tf": "0.1.0", "model": "cnn", "head": "gaussian",
        "targets": targets, "input_shape": list(SHAPE), "complete": True,
    }))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import keras

    from deeplense_tf.models import build_model

    root = tmp_path_factory.mktemp("cluster")
    data = write_dataset(root / "data", counts={"train": 3, "test": N_TEST})
    # Another seed than the baseline's (0), so "trained" and random weights differ.
    keras.utils.set_random_seed(123)
    model = build_model("cnn", SHAPE, [TARGET], **{k: v for k, v in MODEL_SECTION.items()
                                                   if k not in ("name", "options")},
                        **MODEL_SECTION["options"])
    run = _write_run(root / "run", model, [TARGET])
    return {"root": root, "data": data, "run": run, "model": model}


def test_cluster_command_end_to_end(tiny, capsys):
    from deeplense_tf.clustering.embedding import extract_features, load_embeddings
    from deeplense_tf.data import load_examples

    out = tiny["root"] / "out"
    argv = ["cluster", "--run", str(tiny["run"]), "--data", str(tiny["data"]), "--out", str(out),
            "--method", "kmeans", "--k", "3", "--reduce", "pca"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("embeddings.npz", "assignments.csv", "scores.csv", "clusters.csv", "report.md",
                 "summary.json", "plots/map_trained.png", "plots/montage.png",
                 "plots/map_feature_sets.png"):
        assert (out / name).is_file(), name
        assert str(out / name) in printed
    assert f"{N_TEST} examples, kmeans k=3, class ARI" in printed

    # The saved features are the model's `embedding` output with every label beside them.
    examples = load_examples(tiny["data"], split="test")
    saved = load_embeddings(out / "embeddings.npz")
    direct = extract_features(tiny["model"], examples.images, progress=False)
    width = tiny["model"].get_layer("embedding").output.shape[-1]
    assert saved.features.shape == (N_TEST, width) and saved.layer == "embedding"
    np.testing.assert_allclose(saved.features, direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(saved.class_id, examples.class_id)
    assert set(saved.targets) == set(TARGETS) and set(saved.nuisance) == set(NUISANCES)
    np.testing.assert_array_equal(saved.targets[TARGET], examples.targets[TARGET])

    summary = json.loads((out / "summary.json").read_text())
    sets = summary["feature_sets"]
    assert list(sets) == ["trained", "random_weights", "raw_pixels"]
    assert all(fs["k"] == 3 and fs["k_selection"] == "given" for fs in sets.values())
    class_row = next(r for r in sets["trained"]["variables"] if r["variable"] == "class")
    assert class_row["n"] == N_TEST and -1 <= class_row["ari"] <= 1
    with open(out / "assignments.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N_TEST
    # The random-weight features are another model's: their clustering is its own.
    rand = np.array([r["cluster_random_weights"] for r in rows], int)
    assert set(rand) <= {0, 1, 2}
    with open(out / "scores.csv") as fh:
        scores = list(csv.DictReader(fh))
    n_vars = len(sets["trained"]["variables"])
    assert len(scores) == 3 * n_vars
    mass = next(r for r in scores if r["variable"] == TARGET and r["feature_set"] == "trained")
    assert mass["group"] == "trained target" and int(mass["n"]) == int(np.sum(examples.class_id == 2))
    report = (out / "report.md").read_text()
    assert "| class |" in report and "trained target" in report
    assert "trained / random weights / raw pixels (PCA)" in report


def test_cluster_run_in_memory_without_baselines(tiny):
    from deeplense_tf.clustering import cluster_run
    from deeplense_tf.data import load_examples

    examples = load_examples(tiny["data"], split="test")
    summary = cluster_run(tiny["run"], examples, tiny["root"] / "mem", limit=12,
                          baselines=False, method="gmm", reduce="pca", progress=False)
    assert summary["n"] == 12 and list(summary["feature_sets"]) == ["trained"]
    assert summary["feature_sets"]["trained"]["k_selection"] == "bic"
    assert not (tiny["root"] / "mem" / "plots" / "map_feature_sets.png").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layer", "nope"], "no layer 'nope'; valid layer names: image, preprocess"),
        (["--k", str(N_TEST + 1)], f"--k {N_TEST + 1} is larger than the number of examples ({N_TEST})"),
        (["--method", "hdbscan", "--k", "3"], "--k does not apply to hdbscan"),
    ],
)
def test_cluster_command_bad_options(tiny, capsys, extra, message):
    argv = ["cluster", "--run", str(tiny["run"]), "--data", str(tiny["data"]),
            "--out", str(tiny["root"] / "bad"), "--reduce", "pca", *extra]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cluster_command_data_that_does_not_fit(tiny, capsys):
    wrong = tiny["root"] / "wrong.npz"
    np.savez(wrong, images=np.ones((5, 24, 24), np.float32), **{TARGET: np.zeros(5)})
    argv = ["cluster", "--run", str(tiny["run"]), "--data", str(wrong),
            "--out", str(tiny["root"] / "bad2")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "do not fit the model, which takes (16, 16, 1)" in err


@pytest.mark.slow
def test_cluster_a_run_made_by_train(tmp_path, capsys):
    """The real `train` in smoke mode, then `deeplense cluster` with every default."""
    from deeplense_tf.training import train
    from deeplense_tf.training.config import load_config

    data = write_dataset(tmp_path / "data", counts={"train": 24, "val": 6, "test": N_TEST})
    config = load_config("smoke", overrides={"data": {"path": str(data), "targets": [TARGET]}})
    train(config, tmp_path / "run", progress=False)
    out = tmp_path / "out"
    assert main(["cluster", "--run", str(tmp_path / "run"), "--data", str(data),
                 "--out", str(out), "--method", "agglomerative", "--k", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == N_TEST and summary["reduce"] == "tsne"
    assert list(summary["feature_sets"]) == ["trained", "random_weights", "raw_pixels"]
    assert (out / "plots" / "montage.png").is_file()

"""benchmarks/cluster_nuisance.py: taking a known nuisance out recovers a class it hid."""

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cluster_nuisance.py"


def _script():
    spec = importlib.util.spec_from_file_location("cluster_nuisance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cubic_design_has_every_monomial():
    z = np.arange(6.0).reshape(3, 2)
    # 1, then x, y; x², xy, y²; x³, x²y, xy², y³
    assert _script().polynomial(z).shape == (3, 10)


def test_neighbour_residual_recovers_a_class_the_nuisance_hid(tmp_path, capsys):
    from deeplense_tf.clustering.embedding import Embeddings, save_embeddings

    rng = np.random.default_rng(0)
    n = 600
    sx, sy = rng.uniform(-0.35, 0.35, n), rng.uniform(-0.35, 0.35, n)
    classes = np.arange(n) % 3
    # Large non-linear source-position directions, and a small class offset in one feature.
    features = np.stack([5 * np.sin(8 * sx), 5 * np.cos(8 * sy), 40 * sx * sy]
                        + [0.1 * rng.normal(size=n) for _ in range(4)], axis=1)
    features[:, 3] += 0.8 * classes
    path = save_embeddings(tmp_path / "toy.npz", Embeddings(
        features=features.astype(np.float32), layer="embedding", class_id=classes,
        class_names=("a", "b", "c"),
        nuisance={"source_x_arcsec": sx, "source_y_arcsec": sy}))
    out = tmp_path / "table.json"
    assert _script().main(["--embeddings", f"toy={path}", "--out", str(out)]) == 0
    import json

    ari = {r["version"]: r["class_ari"] for r in json.loads(out.read_text())["rows"]}
    assert ari["as is"] < 0.1
    assert ari["minus kNN(nuisance)"] > 0.8
    assert "| toy | minus kNN(nuisance) |" in capsys.readouterr().out

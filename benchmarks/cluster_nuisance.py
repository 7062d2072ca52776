"""What keeps the substructure classes from clustering? Class ARI with the nuisances taken out.

    python benchmarks/cluster_nuisance.py --embeddings NAME=CLUSTER_OUT/embeddings.npz [...] \
        --nuisance source_x_arcsec,source_y_arcsec --out table.json

A diagnostic, not an unsupervised result: it reads the simulator's nuisance values, which
real images do not come with. For each `embeddings.npz` that `deeplense cluster` wrote, the
features are clustered as `deeplense cluster --method kmeans --k 3` does (centred, 16
principal components, k-means with ten starts) in four versions:

- `as is`: what the command reports;
- `standardized`: every feature scaled to unit variance first (`--standardize`);
- `minus linear(nuisance)`: the residual of a least-squares fit of the features on a cubic
  polynomial of the named nuisances;
- `minus kNN(nuisance)`: the residual after subtracting, from each image's features, the
  mean features of its `--neighbours` nearest images in nuisance space (the image itself
  left out). Classes are drawn independently of the nuisances, so that mean mixes the
  classes and removes only what the nuisances explain, however non-linearly.

On deeplense-model-2 the macro lens is fixed and the source position is the only
continuous nuisance a no_sub image has, so the residual versions say how much of the
missing class ARI the source position alone costs, and whether pretraining views that
change the source (same lens and substructure, another source) are worth building.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from deeplense_tf.clustering.embedding import load_embeddings
from deeplense_tf.clustering.methods import cluster
from deeplense_tf.clustering.reduce import pca
from deeplense_tf.clustering.scores import categorical_agreement

PCA_COMPONENTS = 16


def nuisance_matrix(embeddings, names: list[str]) -> np.ndarray:
    missing = [n for n in names if n not in embeddings.nuisance]
    if missing:
        raise SystemExit(f"{embeddings.source or 'embeddings'}: no nuisance {', '.join(missing)} "
                         f"(it has {', '.join(sorted(embeddings.nuisance)) or 'none'})")
    z = np.stack([np.asarray(embeddings.nuisance[n], float) for n in names], axis=1)
    return (z - z.mean(axis=0)) / np.maximum(z.std(axis=0), 1e-12)


def polynomial(z: np.ndarray, degree: int = 3) -> np.ndarray:
    """Every monomial of the columns of z up to `degree`, with a constant column."""
    columns = [np.ones(len(z))]
    terms = [()]
    for _ in range(degree):
        terms = sorted({tuple(sorted(t + (j,))) for t in terms for j in range(z.shape[1])})
        columns += [np.prod(z[:, list(t)], axis=1) for t in terms]
    return np.stack(columns, axis=1)


def minus_linear(features: np.ndarray, z: np.ndarray) -> np.ndarray:
    design = polynomial(z)
    coef, *_ = np.linalg.lstsq(design, features, rcond=None)
    return features - design @ coef


def minus_neighbours(features: np.ndarray, z: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k + 1).fit(z)
    _, rows = index.kneighbors(z)
    return features - features[rows[:, 1:]].mean(axis=1)  # column 0 is the image itself


def class_ari(features: np.ndarray, truth: np.ndarray, *, scale: bool, seed: int) -> dict:
    space = pca(features, PCA_COMPONENTS, seed, scale=scale)
    labels = cluster(space, "kmeans", 3, seed=seed).labels
    return categorical_agreement(labels, truth)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embeddings", action="append", required=True, metavar="NAME=PATH",
                        help="an embeddings.npz written by deeplense cluster (repeatable)")
    parser.add_argument("--nuisance", default="source_x_arcsec,source_y_arcsec",
                        help="comma-separated nuisance names to take out")
    parser.add_argument("--neighbours", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the table as JSON here")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.nuisance.split(",") if n.strip()]

    rows = []
    for item in args.embeddings:
        label, sep, path = item.partition("=")
        if not sep:
            label, path = Path(item).parent.name, item
        emb = load_embeddings(path)
        if emb.class_id is None:
            raise SystemExit(f"{path}: no class labels to score against")
        x = np.asarray(emb.features, float)
        x = x - x.mean(axis=0)
        z = nuisance_matrix(emb, names)
        versions = {
            "as is": (x, False),
            "standardized": (x, True),
            "minus linear(nuisance)": (minus_linear(x, z), False),
            "minus kNN(nuisance)": (minus_neighbours(x, z, args.neighbours), False),
        }
        for version, (features, scale) in versions.items():
            score = class_ari(features, emb.class_id, scale=scale, seed=args.seed)
            rows.append({"features": label, "version": version, "n": score["n"],
                         "class_ari": round(score["ari"], 3), "class_nmi": round(score["nmi"], 3)})
            print(f"{label:>24}  {version:<24} ARI {score['ari']:.3f}  NMI {score['nmi']:.3f}",
                  flush=True)
    print("\n| features | version | class ARI | class NMI |\n|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['features']} | {r['version']} | {r['class_ari']:.2f} | {r['class_nmi']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps({"nuisance": names, "neighbours": args.neighbours,
                                        "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

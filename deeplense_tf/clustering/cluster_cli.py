"""`deeplense cluster`: cluster a run's intermediate-layer features on a data set."""

from __future__ import annotations

from deeplense_tf.clustering.embedding import DEFAULT_LAYER, POOLINGS
from deeplense_tf.clustering.methods import METHODS
from deeplense_tf.clustering.pipeline import CLUSTER_SPACES, DEFAULT_PCA_COMPONENTS
from deeplense_tf.clustering.reduce import REDUCERS


def add_arguments(parser) -> None:
    parser.add_argument("--run", required=True, help="training run folder (model.keras, run.json ...)")
    parser.add_argument("--data", required=True,
                        help="data set: simulated data directory, DeepLense .npy folder, .npz or .h5")
    parser.add_argument("--out", required=True, help="output folder for embeddings, tables, plots")
    parser.add_argument("--split", default="test", help="split of a simulated data directory (default: test)")
    parser.add_argument("--layer", default=DEFAULT_LAYER,
                        help="layer whose output is clustered (default: %(default)s, the pooled "
                             "encoder output); 'outer/inner' for a layer inside a nested model")
    parser.add_argument("--pooling", choices=POOLINGS, default="mean",
                        help="how a feature-map or sequence output becomes one vector per image "
                             "(default: %(default)s = global average)")
    parser.add_argument("--method", choices=METHODS, default="kmeans")
    parser.add_argument("--k", type=int, default=None,
                        help="number of clusters (default: BIC for gmm, silhouette for kmeans / "
                             "agglomerative; hdbscan finds its own)")
    parser.add_argument("--min-cluster-size", type=int, default=None,
                        help="hdbscan's smallest cluster (default: max(5, N/20))")
    parser.add_argument("--reduce", choices=REDUCERS, default="tsne",
                        help="2-D map for the plots (umap needs the [umap] extra)")
    parser.add_argument("--cluster-space", choices=CLUSTER_SPACES, default="pca",
                        help="cluster on the leading principal components or on the 2-D map")
    parser.add_argument("--pca-components", type=int, default=DEFAULT_PCA_COMPONENTS,
                        help="principal components the clustering runs on (default: %(default)s)")
    parser.add_argument("--standardize", action="store_true",
                        help="scale every feature to unit variance before PCA (default: only "
                             "centre, so the most active directions lead)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N examples")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baselines", action="store_true",
                        help="skip the raw-pixel and random-weight baselines")


def run(args) -> int:
    from deeplense_tf.clustering.pipeline import cluster_run

    summary = cluster_run(
        args.run, args.data, args.out,
        split=args.split, limit=args.limit, layer=args.layer, pooling=args.pooling,
        method=args.method, k=args.k, reduce=args.reduce, cluster_space=args.cluster_space,
        pca_components=args.pca_components, standardize=args.standardize,
        min_cluster_size=args.min_cluster_size,
        baselines=not args.no_baselines, batch_size=args.batch_size, seed=args.seed,
    )
    files = summary["files"]
    for path in files.values():
        for p in path if isinstance(path, list) else [path]:
            print(f"wrote {p}")
    trained = summary["feature_sets"]["trained"]
    cls = next((r for r in trained["variables"] if r["variable"] == "class"), None)
    line = f"{summary['n']} examples, {summary['method']} k={trained['k']}"
    if cls is not None:
        line += f", class ARI {cls['ari']:.3f} NMI {cls['nmi']:.3f}"
        for name in ("random_weights", "raw_pixels"):
            fs = summary["feature_sets"].get(name)
            if fs:
                r = next(r for r in fs["variables"] if r["variable"] == "class")
                line += f" | {name} ARI {r['ari']:.3f}"
    print(line)
    return 0

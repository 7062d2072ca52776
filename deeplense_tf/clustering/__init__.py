"""Clustering of intermediate-layer features: what did a regressor learn that it was never
told about?

`cluster_run(run_dir, data, out_dir, **options)` does it all for a training run; the pieces
are `embedding` (features of a named layer, `.npz`), `reduce` (PCA, t-SNE, UMAP), `methods`
(k-means, Gaussian mixture, HDBSCAN, agglomerative), `scores`, `baselines`, `plots`,
`report`.
"""

from deeplense_tf.clustering.pipeline import analyse_features, cluster_model, cluster_run

__all__ = ["analyse_features", "cluster_model", "cluster_run"]

"""Clustering of intermediate-layer features: what did a regressor learn that it was never
told about?

`cluster_run(run_dir, data, out_dir, **options)` does it all for a training run and
`cluster_model(model, examples, out_dir, ...)` for any Keras model; the pieces are
`embedding` (features of a named layer, `.npz`), `reduce` (PCA, t-SNE, UMAP), `methods`
(k-means, Gaussian mixture, HDBSCAN, agglomerative), `scores`, `baselines`, `plots`,
`report`. Importing this package does not import TensorFlow.
"""

from deeplense_tf.clustering.embedding import (
    Embeddings,
    embedding_model,
    extract_features,
    layer_names,
    load_embeddings,
    save_embeddings,
)
from deeplense_tf.clustering.methods import METHODS, cluster
from deeplense_tf.clustering.pipeline import analyse_features, cluster_model, cluster_run

__all__ = [
    "METHODS",
    "Embeddings",
    "analyse_features",
    "cluster",
    "cluster_model",
    "cluster_run",
    "embedding_model",
    "extract_features",
    "layer_names",
    "load_embeddings",
    "save_embeddings",
]

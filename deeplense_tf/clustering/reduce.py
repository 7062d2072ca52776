"""Dimensionality reduction: PCA for clustering, PCA / t-SNE / UMAP 2-D maps.

By default features are only centred before PCA, so the directions along which the
network's features vary most lead. `scale=True` standardises every feature first (and
drops the constant ones, e.g. dead ReLU units); that gives near-silent units the same
weight as active ones, which on pooled CNN features mostly adds noise.
"""

from __future__ import annotations

import numpy as np

from deeplense_tf.clustering.threads import few_threads
from deeplense_tf.errors import ConfigError


def available_reducers() -> tuple[str, ...]:
    """`pca`, `tsne`, and `umap` when the optional `umap-learn` package imports."""
    try:
        import umap  # noqa: F401
    except ImportError:
        return ("pca", "tsne")
    return ("pca", "tsne", "umap")


REDUCERS = ("pca", "tsne", "umap")


def standardize(features: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column; constant columns removed. `[N, D] -> [N, D']`."""
    x = np.asarray(features, dtype=np.float64)
    std = x.std(axis=0)
    keep = std > 1e-12 * max(1.0, float(np.abs(x).max(initial=0.0)))
    if not keep.any():
        # Every feature is constant: keep one zero column so shapes stay valid downstream.
        return np.zeros((len(x), 1))
    return (x[:, keep] - x[:, keep].mean(axis=0)) / std[keep]


def pca(features: np.ndarray, n_components: int, seed: int = 0, scale: bool = False) -> np.ndarray:
    """First `n_components` principal components (fewer if N or D is smaller), `[N, d]`.

    `scale=True` standardises each feature first (see the module docstring).
    """
    from sklearn.decomposition import PCA

    x = standardize(features) if scale else np.asarray(features, dtype=np.float64)
    d = max(1, min(int(n_components), x.shape[1], len(x)))
    return PCA(n_components=d, random_state=seed).fit_transform(x)


def reduce_2d(features: np.ndarray, method: str = "pca", seed: int = 0,
              pca_first: int = 50, scale: bool = False) -> np.ndarray:
    """A 2-D map `[N, 2]` of `features` with `method` (`pca`, `tsne`, `umap`).

    t-SNE and UMAP run on the first `pca_first` principal components (standard practice:
    it removes noise dimensions and makes t-SNE on thousands of points take seconds).
    `scale` standardises each feature first (see `pca`).
    """
    if method not in REDUCERS:
        raise ConfigError(f"reduction {method!r} is not one of {', '.join(REDUCERS)}")
    if method not in available_reducers():
        raise ConfigError(
            "reduction 'umap' needs the optional umap-learn package: pip install 'deeplense-tf[umap]'"
        )
    n = len(features)
    if n < 3:
        raise ConfigError(f"a 2-D map needs at least 3 examples, got {n}")
    if method == "pca":
        out = pca(features, 2, seed, scale)
        return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    x = pca(features, pca_first, seed, scale)
    if method == "tsne":
        from sklearn.manifold import TSNE

        # Perplexity must stay below N; ~N/3 keeps small test sets meaningful.
        perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                    learning_rate="auto")
        # Single-threaded below 5,000 points: 3,000 points took 9 s of CPU with one thread
        # and 54 s with two busy cores spin-waiting (see threads.py).
        with few_threads(n):
            return tsne.fit_transform(x)
    import umap

    n_neighbors = int(min(15, max(2, n - 1)))
    return umap.UMAP(n_components=2, n_neighbors=n_neighbors, random_state=seed).fit_transform(x)

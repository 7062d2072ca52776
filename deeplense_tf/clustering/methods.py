"""Clustering methods on a feature matrix `[N, d]`: k-means, Gaussian mixture, HDBSCAN,
agglomerative (Ward).

When `k` is not given: the Gaussian mixture picks its number of components by the lowest
BIC over 1..`max_k`; k-means and agglomerative pick k by the highest silhouette over
2..`max_k`; HDBSCAN finds its own number of clusters (it takes `min_cluster_size`, not k)
and labels outliers -1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from deeplense_tf.clustering.threads import few_threads
from deeplense_tf.errors import ConfigError

METHODS = ("kmeans", "gmm", "hdbscan", "agglomerative")
DEFAULT_MAX_K = 10
NOISE = -1


@dataclass
class ClusterResult:
    """Cluster labels `[N]` (-1 = noise, HDBSCAN only), the number of clusters and how it
    was chosen (`selection`: `given`, `bic`, `silhouette` or `density`)."""

    labels: np.ndarray
    method: str
    k: int
    selection: str
    details: dict = field(default_factory=dict)


def _check_k(k: int, n: int, method: str) -> None:
    if k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}")
    if k > n:
        raise ConfigError(f"--k {k} is larger than the number of examples ({n}) for {method}")


def _fit(method: str, x: np.ndarray, k: int, seed: int, covariance_type: str):
    from sklearn.cluster import AgglomerativeClustering, KMeans
    from sklearn.mixture import GaussianMixture

    if method == "kmeans":
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x), None
    if method == "agglomerative":
        return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x), None
    gmm = GaussianMixture(
        n_components=k, covariance_type=covariance_type, n_init=2, reg_covar=1e-5,
        random_state=seed,
    ).fit(x)
    return gmm.predict(x), gmm.bic(x)


def _silhouette(x: np.ndarray, labels: np.ndarray, seed: int) -> float:
    from sklearn.metrics import silhouette_score

    if not 2 <= len(np.unique(labels)) <= len(x) - 1:
        return -1.0
    # Silhouette is O(N^2); a 4,000-point sample decides k as well as the whole set.
    sample = min(len(x), 4000)
    return float(silhouette_score(x, labels, sample_size=sample, random_state=seed))


def cluster(features, method: str = "kmeans", k: int | None = None, **options) -> ClusterResult:
    """Cluster the rows of `features` `[N, d]` with `method` (see the module docstring).

    Options: `seed` (0), `max_k` (10), `min_cluster_size` (HDBSCAN; default max(5, N/20)),
    `covariance_type` (Gaussian mixture; "full").
    """
    with few_threads(len(features)):
        return _cluster(features, method, k, **options)


def _cluster(
    features: np.ndarray,
    method: str = "kmeans",
    k: int | None = None,
    *,
    seed: int = 0,
    max_k: int = DEFAULT_MAX_K,
    min_cluster_size: int | None = None,
    covariance_type: str = "full",
) -> ClusterResult:
    if method not in METHODS:
        raise ConfigError(f"clustering method {method!r} is not one of {', '.join(METHODS)}")
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ConfigError(f"features must be [N, d], got shape {x.shape}")
    n = len(x)
    if n < 2:
        raise ConfigError(f"clustering needs at least 2 examples, got {n}")

    if method == "hdbscan":
        from sklearn.cluster import HDBSCAN

        if k is not None:
            raise ConfigError(
                "hdbscan finds the number of clusters itself; drop --k (or use "
                "min_cluster_size to control cluster size)"
            )
        mcs = int(min_cluster_size or max(5, n // 20))
        if not 2 <= mcs <= n:
            raise ConfigError(f"min_cluster_size must be in 2..{n}, got {mcs}")
        labels = HDBSCAN(min_cluster_size=mcs, copy=True).fit_predict(x)
        found = len(set(labels.tolist()) - {NOISE})
        return ClusterResult(
            labels, method, found, "density",
            {"min_cluster_size": mcs, "noise_fraction": float(np.mean(labels == NOISE))},
        )

    if k is not None:
        _check_k(int(k), n, method)
        labels, bic = _fit(method, x, int(k), seed, covariance_type)
        details = {} if bic is None else {"bic": {int(k): float(bic)}}
        return ClusterResult(labels, method, int(k), "given", details)

    # Candidate k up to max_k, and no more than N/2 (clusters of two examples on average).
    max_k = max(2, min(int(max_k), n // 2))
    if method == "gmm":
        bics = {}
        best = None
        for c in range(1, max_k + 1):
            labels, bic = _fit(method, x, c, seed, covariance_type)
            bics[c] = float(bic)
            if best is None or bic < bics[best[0]]:
                best = (c, labels)
        return ClusterResult(best[1], method, best[0], "bic", {"bic": bics})

    scores = {}
    best = None
    for c in range(2, min(max_k, n - 1) + 1):
        labels, _ = _fit(method, x, c, seed, covariance_type)
        scores[c] = _silhouette(x, labels, seed)
        if best is None or scores[c] > scores[best[0]]:
            best = (c, labels)
    if best is None:  # n == 2: the only split that silhouette cannot score
        labels, _ = _fit(method, x, 1, seed, covariance_type)
        return ClusterResult(labels, method, 1, "silhouette", {"silhouette": {}})
    return ClusterResult(best[1], method, best[0], "silhouette", {"silhouette": scores})

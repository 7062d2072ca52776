"""Thread limits for small scikit-learn problems.

On a few shared cores, OpenMP and BLAS worker threads spin-wait for each other: k-means,
Gaussian mixtures, probes and t-SNE on a few hundred points ran 5-10x slower with the
default thread count than with one thread (measured on a busy 2-core machine). Below a
size where parallel work pays off, these run single-threaded.
"""

from __future__ import annotations

SMALL_PROBLEM_ROWS = 5000


def few_threads(n_rows: int, threshold: int = SMALL_PROBLEM_ROWS):
    """Context manager: one BLAS/OpenMP thread when `n_rows < threshold`, else no change."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1 if n_rows < threshold else None)

"""The VICReg objective (Bardes, Ponce & LeCun 2022): variance, invariance, covariance.

Two batches of projections `za`, `zb` `[B, D]` of the same images under two views:

- invariance: mean squared difference `mean((za - zb)**2)` (zero for identical views);
- variance: per dimension, `relu(gamma - sqrt(var + eps))` averaged over dimensions and
  over the two branches; it keeps every dimension spread over the batch, which is what
  stops the trivial solution (all images to one point: the term is `gamma - sqrt(eps)`);
- covariance: the squared off-diagonal entries of each branch's covariance matrix, summed
  and divided by `D`, added over both branches; it decorrelates the dimensions, so they
  carry different information.

`loss = invariance_weight * invariance + variance_weight * variance + covariance_weight *
covariance` (the paper's 25 / 25 / 1 by default). Why VICReg for this package: it needs no
negative pairs (SimCLR's contrastive loss needs large batches to have enough of them, and a
2-core CPU trains at batch 32-64), its anti-collapse term is explicit and measurable
(`std` is logged every epoch), and it has no momentum encoder or predictor to tune.

Variances and covariances are batch statistics, so under a distribution strategy each
replica computes them over its own share of the batch (the paper gathers the global
batch; at the batch sizes used here one replica is the usual case).
"""

from __future__ import annotations

DEFAULT_WEIGHTS = {"invariance": 25.0, "variance": 25.0, "covariance": 1.0}
VARIANCE_TARGET = 1.0  # gamma: the per-dimension std the variance term asks for
EPSILON = 1e-4  # inside the square root, so a collapsed dimension has a finite gradient


def _branch_terms(z):
    """(variance term, covariance term, mean per-dimension std) of one branch `[B, D]`."""
    import tensorflow as tf

    n = tf.cast(tf.shape(z)[0], tf.float32)
    d = tf.cast(tf.shape(z)[1], tf.float32)
    centred = z - tf.reduce_mean(z, axis=0, keepdims=True)
    cov = tf.matmul(centred, centred, transpose_a=True) / tf.maximum(n - 1.0, 1.0)  # [D, D]
    std = tf.sqrt(tf.linalg.diag_part(cov) + EPSILON)
    variance = tf.reduce_mean(tf.nn.relu(VARIANCE_TARGET - std))
    off_diagonal = tf.reduce_sum(tf.square(cov)) - tf.reduce_sum(tf.square(tf.linalg.diag_part(cov)))
    return variance, off_diagonal / d, tf.reduce_mean(std)


def vicreg_terms(za, zb) -> dict:
    """The three VICReg terms of projections `za`, `zb` `[B, D]` (float32 scalars).

    Returns `{"invariance", "variance", "covariance", "std"}`: the variance term is the mean
    of the two branches', the covariance term their sum (as in the paper), `std` the mean
    per-dimension standard deviation of both branches (1 or more: spread; near 0: collapse).
    """
    import tensorflow as tf

    za = tf.cast(za, tf.float32)
    zb = tf.cast(zb, tf.float32)
    invariance = tf.reduce_mean(tf.square(za - zb))
    var_a, cov_a, std_a = _branch_terms(za)
    var_b, cov_b, std_b = _branch_terms(zb)
    return {
        "invariance": invariance,
        "variance": 0.5 * (var_a + var_b),
        "covariance": cov_a + cov_b,
        "std": 0.5 * (std_a + std_b),
    }


def vicreg_loss(terms: dict, weights: dict | None = None):
    """The weighted sum of `vicreg_terms`' invariance, variance and covariance terms."""
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    return (w["invariance"] * terms["invariance"] + w["variance"] * terms["variance"]
            + w["covariance"] * terms["covariance"])

"""How good the clusters are, and which hidden variables they (and the features) capture.

- Internal scores of a clustering: silhouette (higher is better, -1..1), Davies-Bouldin
  (lower is better, >= 0), Calinski-Harabasz (higher is better). HDBSCAN's noise points
  (label -1) are left out of these three.
- Against a categorical hidden variable (the substructure class): adjusted Rand index and
  normalised mutual information of the cluster labels (noise counts as its own cluster),
  and the cross-validated balanced accuracy of a linear probe (logistic regression) on the
  features as a whole.
- Against a continuous hidden variable (source position, vortex angle, exposure, Einstein
  radius, the trained target ...): the mutual information (nats, k-NN estimator) between
  the cluster label and the variable, the correlation ratio eta^2 (fraction of the
  variable's variance explained by cluster membership, 0..1), and the cross-validated R^2
  of a linear probe (ridge regression) on the features as a whole.
- Angles (names ending `_angle_rad` or `_angle_deg`) are orientations of a line or an
  ellipse, which repeat every half turn: a vortex at 10 degrees is the same as one at 190.
  Their scores are the mean of the scores of cos(2 angle) and sin(2 angle), so a value
  near 0 and one near 2 pi count as close.

Rows where a variable is NaN (undefined for that class) are left out of that variable's
scores; a score that cannot be computed (too few rows, a single cluster) is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deeplense_tf.clustering.threads import few_threads

NOISE = -1
# A variable with at most this many distinct integer values is treated as categorical.
MAX_CATEGORIES = 20
MIN_ROWS = 10
ANGLE_SUFFIXES = ("_angle_rad", "_angle_deg")
PROBE_FOLDS = 5


@dataclass
class HiddenVariable:
    """One label carried by the data: `kind` is `categorical` or `continuous`; `group` is
    `class`, `target` or `nuisance`; `categories` names the integer codes of a categorical."""

    name: str
    kind: str
    group: str
    values: np.ndarray
    categories: tuple[str, ...] = ()

    @property
    def is_angle(self) -> bool:
        return self.kind == "continuous" and self.name.endswith(ANGLE_SUFFIXES)

    def components(self) -> list[np.ndarray]:
        """The arrays a continuous variable is scored on: itself, or (cos 2a, sin 2a)."""
        if not self.is_angle:
            return [np.asarray(self.values, dtype=np.float64)]
        radians = np.asarray(self.values, np.float64)
        if self.name.endswith("_deg"):
            radians = np.deg2rad(radians)
        return [np.cos(2 * radians), np.sin(2 * radians)]


def _is_categorical(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return False
    unique = np.unique(finite)
    return len(unique) <= MAX_CATEGORIES and np.all(unique == np.round(unique))


def hidden_variables(data) -> list[HiddenVariable]:
    """Every label of `data` (an `Examples` or `Embeddings`): the class, targets, nuisances.

    Targets and nuisances with a handful of integer values (e.g. a subhalo count) are
    treated as categorical; variables that are constant or all NaN are skipped.
    """
    out = []
    class_id = getattr(data, "class_id", None)
    if class_id is not None and len(np.unique(class_id)) > 1:
        names = tuple(getattr(data, "class_names", ()) or ())
        out.append(HiddenVariable("class", "categorical", "class", np.asarray(class_id), names))
    for group, values_by_name in (("target", data.targets), ("nuisance", data.nuisance)):
        for name, values in (values_by_name or {}).items():
            values = np.asarray(values, dtype=np.float64)
            finite = values[np.isfinite(values)]
            if finite.size < 2 or np.ptp(finite) == 0:
                continue
            kind = "categorical" if _is_categorical(values) else "continuous"
            out.append(HiddenVariable(name, kind, group, values))
    return out


def _valid_labels(labels: np.ndarray) -> bool:
    return 2 <= len(np.unique(labels)) <= len(labels) - 1


def internal_scores(features: np.ndarray, labels: np.ndarray, sample_size: int = 5000,
                    seed: int = 0) -> dict[str, float]:
    """Silhouette, Davies-Bouldin and Calinski-Harabasz of `labels` on `features`.

    Silhouette is exact up to `sample_size` points and estimated on a random sample of
    that size beyond (it is O(N^2)).
    """
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    keep = labels != NOISE
    x, y = np.asarray(features)[keep], np.asarray(labels)[keep]
    nan = {"silhouette": np.nan, "davies_bouldin": np.nan, "calinski_harabasz": np.nan}
    if len(y) < 3 or not _valid_labels(y):
        return nan
    sample = None if len(y) <= sample_size else sample_size
    return {
        "silhouette": float(silhouette_score(x, y, sample_size=sample, random_state=seed)),
        "davies_bouldin": float(davies_bouldin_score(x, y)),
        "calinski_harabasz": float(calinski_harabasz_score(x, y)),
    }


def _finite_rows(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind in "iub":
        return np.ones(len(values), bool)
    return np.isfinite(values)


def categorical_agreement(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """ARI and NMI (arithmetic normalisation, sklearn's default) of `labels` vs `truth`."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rows = _finite_rows(truth)
    if rows.sum() < 2:
        return {"ari": np.nan, "nmi": np.nan, "n": int(rows.sum())}
    t, c = np.asarray(truth)[rows], np.asarray(labels)[rows]
    return {
        "ari": float(adjusted_rand_score(t, c)),
        "nmi": float(normalized_mutual_info_score(t, c)),
        "n": int(rows.sum()),
    }


def correlation_ratio(labels: np.ndarray, values: np.ndarray) -> float:
    """eta^2 = between-cluster variance / total variance of `values` (0..1)."""
    values = np.asarray(values, dtype=np.float64)
    total = np.sum((values - values.mean()) ** 2)
    if total == 0:
        return np.nan
    between = 0.0
    for c in np.unique(labels):
        v = values[labels == c]
        between += len(v) * (v.mean() - values.mean()) ** 2
    return float(between / total)


def continuous_association(labels: np.ndarray, values: np.ndarray, seed: int = 0) -> dict:
    """Mutual information (nats) and eta^2 between cluster `labels` and a continuous variable."""
    from sklearn.feature_selection import mutual_info_classif

    rows = np.isfinite(values)
    v, c = np.asarray(values, np.float64)[rows], np.asarray(labels)[rows]
    if len(v) < MIN_ROWS or len(np.unique(c)) < 2 or np.ptp(v) == 0:
        return {"mi": np.nan, "eta2": np.nan, "n": int(len(v))}
    # sklearn's estimator (Ross 2014) lowers k for small clusters and skips singletons.
    mi = mutual_info_classif(v[:, None], c, discrete_features=False, n_neighbors=3,
                             random_state=seed)[0]
    return {"mi": float(mi), "eta2": correlation_ratio(c, v), "n": int(len(v))}


def _folds(n_rows: int, seed: int, stratify: np.ndarray | None = None):
    from sklearn.model_selection import KFold, StratifiedKFold

    folds = int(min(PROBE_FOLDS, n_rows // 2))
    if stratify is not None:
        folds = int(min(folds, np.bincount(np.unique(stratify, return_inverse=True)[1]).min()))
        return StratifiedKFold(folds, shuffle=True, random_state=seed) if folds >= 2 else None
    return KFold(folds, shuffle=True, random_state=seed) if folds >= 2 else None


def probe_r2(features: np.ndarray, values: np.ndarray, seed: int = 0) -> dict:
    """Cross-validated R^2 of a linear (ridge) regression from `features` to `values`.

    Features are standardised inside each fold; the ridge strength is chosen per fold by
    efficient leave-one-out over 1e-3..1e3, so wide embeddings on few examples do not
    simply overfit. R^2 is the mean over 5 shuffled folds; below 0 means worse than
    predicting the mean.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = np.isfinite(values)
    x, y = np.asarray(features, np.float64)[rows], np.asarray(values, np.float64)[rows]
    cv = _folds(len(y), seed)
    if len(y) < MIN_ROWS or cv is None or np.ptp(y) == 0:
        return {"probe_r2": np.nan, "n": int(len(y))}
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    r2 = cross_val_score(model, x, y, cv=cv, scoring="r2")
    return {"probe_r2": float(np.mean(r2)), "n": int(len(y))}


def probe_accuracy(features: np.ndarray, truth: np.ndarray, seed: int = 0) -> dict:
    """Cross-validated balanced accuracy of a logistic-regression probe, and its chance level."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = _finite_rows(truth)
    x, y = np.asarray(features, np.float64)[rows], np.asarray(truth)[rows]
    classes = np.unique(y)
    cv = _folds(len(y), seed, stratify=y) if len(classes) > 1 else None
    if len(y) < MIN_ROWS or cv is None:
        return {"probe_accuracy": np.nan, "chance": np.nan, "n": int(len(y))}
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    acc = cross_val_score(model, x, y, cv=cv, scoring="balanced_accuracy")
    return {"probe_accuracy": float(np.mean(acc)), "chance": 1.0 / len(classes), "n": int(len(y))}


def score_variables(features: np.ndarray, labels: np.ndarray, variables: list[HiddenVariable],
                    seed: int = 0, probes: bool = True) -> list[dict]:
    """One row per hidden variable: the scores of the module docstring for its kind."""
    with few_threads(len(features)):
        return _score_variables(features, labels, variables, seed, probes)


def _score_variables(features, labels, variables, seed, probes) -> list[dict]:
    rows = []
    for var in variables:
        row = {"variable": var.name, "group": var.group, "kind": var.kind}
        if var.kind == "categorical":
            row.update(categorical_agreement(labels, var.values))
            if probes:
                probe = probe_accuracy(features, var.values, seed)
                row.update({k: probe[k] for k in ("probe_accuracy", "chance")})
        else:
            parts = [continuous_association(labels, v, seed) for v in var.components()]
            row.update(_mean_rows(parts))
            if probes:
                r2 = [probe_r2(features, v, seed)["probe_r2"] for v in var.components()]
                row["probe_r2"] = float(np.mean(r2))
            if var.is_angle:
                row["scored_on"] = "cos 2a, sin 2a"
        rows.append(row)
    return rows


def _mean_rows(parts: list[dict]) -> dict:
    """Component-wise mean of score dicts (`n` kept from the first)."""
    out = {"n": parts[0]["n"]}
    for key in parts[0]:
        if key != "n":
            out[key] = float(np.mean([p[key] for p in parts]))
    return out


def cluster_profiles(labels: np.ndarray, variables: list[HiddenVariable]) -> list[dict]:
    """Per cluster: its size, and for each variable how the cluster differs from all data.

    Categorical: the majority category, its share in the cluster and that share divided by
    its share overall (`lift`). Continuous: the cluster mean and its offset from the overall
    mean in units of the overall standard deviation (`z`).
    """
    profiles = []
    for c in sorted(np.unique(labels).tolist()):
        members = labels == c
        prof = {"cluster": int(c), "size": int(members.sum()), "variables": {}}
        for var in variables:
            rows = _finite_rows(var.values)
            inside = var.values[members & rows]
            if len(inside) == 0:
                prof["variables"][var.name] = {"kind": var.kind, "n": 0}
                continue
            if var.kind == "categorical":
                cats, counts = np.unique(inside, return_counts=True)
                top = cats[np.argmax(counts)]
                share = counts.max() / len(inside)
                overall = np.mean(var.values[rows] == top)
                name = (
                    var.categories[int(top)]
                    if var.categories and 0 <= int(top) < len(var.categories)
                    else str(top)
                )
                prof["variables"][var.name] = {
                    "kind": var.kind, "n": int(len(inside)), "majority": name,
                    "share": float(share), "lift": float(share / overall),
                }
            else:
                # For an angle: the component (cos 2a or sin 2a) that moves most.
                zs = []
                for comp in var.components():
                    all_values = comp[rows]
                    std = all_values.std()
                    zs.append((comp[members & rows].mean() - all_values.mean()) / std
                              if std > 0 else np.nan)
                z = max(zs, key=lambda v: abs(v) if np.isfinite(v) else -1.0)
                mean = _axial_mean(var, inside) if var.is_angle else float(inside.mean())
                prof["variables"][var.name] = {
                    "kind": var.kind, "n": int(len(inside)), "mean": mean, "z": float(z),
                    "axial": var.is_angle,
                }
        profiles.append(prof)
    return profiles


def _axial_mean(var: HiddenVariable, values: np.ndarray) -> float:
    """Mean orientation of angles that repeat every half turn, in the variable's unit."""
    half_turn = 180.0 if var.name.endswith("_deg") else np.pi
    doubled = 2 * np.pi * np.asarray(values, np.float64) / half_turn
    mean = np.arctan2(np.sin(doubled).mean(), np.cos(doubled).mean()) % (2 * np.pi)
    return float(mean * half_turn / (2 * np.pi))

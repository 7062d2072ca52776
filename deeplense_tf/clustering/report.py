"""The answer to "which hidden property does each cluster, and the embedding as a whole,
capture?" as CSV tables and a markdown report.

Verdicts use fixed thresholds (stated in the report):

- clusters, categorical variable: NMI >= 0.3 "yes", >= 0.1 "partly", else "no";
- clusters, continuous variable: eta^2 >= 0.3 "yes", >= 0.1 "partly", else "no";
- embedding, categorical: probe balanced accuracy above chance, as a fraction of the way
  from chance to 1, >= 0.5 "yes", >= 0.2 "partly";
- embedding, continuous: probe R^2 >= 0.5 "yes", >= 0.2 "partly";
- a cluster "captures" a class when its majority class holds >= 60 % of it and is at
  least 1.25 times as frequent as overall, and a continuous variable when the cluster mean
  is at least 0.5 standard deviations from the overall mean.
"""

from __future__ import annotations

import math
import os

import numpy as np

YES, PARTLY = "yes", "partly"
CLUSTER_CAT = (0.3, 0.1)
CLUSTER_CONT = (0.3, 0.1)
PROBE_CAT = (0.5, 0.2)
PROBE_CONT = (0.5, 0.2)
CAPTURE_SHARE, CAPTURE_LIFT, CAPTURE_Z = 0.6, 1.25, 0.5

FEATURE_SET_TITLES = {
    "trained": "trained",
    "random_weights": "random weights",
    "raw_pixels": "raw pixels (PCA)",
}


def _level(value, thresholds) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return YES if value >= thresholds[0] else PARTLY if value >= thresholds[1] else "no"


def verdicts(row: dict) -> tuple[str, str]:
    """(clusters verdict, embedding verdict) of one `score_variables` row."""
    if row["kind"] == "categorical":
        clusters = _level(row.get("nmi"), CLUSTER_CAT)
        acc, chance = row.get("probe_accuracy"), row.get("chance")
        gain = (
            (acc - chance) / (1 - chance)
            if acc is not None and chance is not None and math.isfinite(acc) and chance < 1
            else None
        )
        return clusters, _level(gain, PROBE_CAT)
    return _level(row.get("eta2"), CLUSTER_CONT), _level(row.get("probe_r2"), PROBE_CONT)


def cluster_captures(profile: dict) -> list[str]:
    """What one cluster (a `cluster_profiles` entry) stands out by, strongest first."""
    found = []
    for name, v in profile["variables"].items():
        if v.get("n", 0) == 0:
            continue
        if v["kind"] == "categorical":
            if v["share"] >= CAPTURE_SHARE and v["lift"] >= CAPTURE_LIFT:
                strength = v["lift"]
                found.append((strength, f"{name}={v['majority']} ({v['share']:.0%}, x{v['lift']:.1f})"))
        elif math.isfinite(v["z"]) and abs(v["z"]) >= CAPTURE_Z:
            side = (f"near {v['mean']:.2g}" if v.get("axial")
                    else "high" if v["z"] > 0 else "low")
            found.append((abs(v["z"]) + 1, f"{name} {side} (z={v['z']:+.1f})"))
    return [text for _, text in sorted(found, key=lambda t: -t[0])]


def _fmt(value, digits=2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def score_table(summary: dict):
    """pandas DataFrame: one row per (feature set, hidden variable) with every score."""
    import pandas as pd

    rows = []
    for fs_name, fs in summary["feature_sets"].items():
        for row in fs["variables"]:
            clusters, embedding = verdicts(row)
            rows.append({"feature_set": fs_name, **row, "clusters_capture": clusters,
                         "embedding_captures": embedding})
    columns = ["feature_set", "variable", "group", "kind", "n", "ari", "nmi", "probe_accuracy",
               "chance", "mi", "eta2", "probe_r2", "scored_on", "clusters_capture",
               "embedding_captures"]
    return pd.DataFrame(rows).reindex(columns=columns)


def cluster_table(profiles: list[dict]):
    """pandas DataFrame: one row per cluster (trained features), its size, what it captures
    and, per variable, majority/share/lift (categorical) or mean/z (continuous)."""
    import pandas as pd

    rows = []
    for prof in profiles:
        row = {"cluster": prof["cluster"], "size": prof["size"],
               "captures": "; ".join(cluster_captures(prof)) or "nothing distinctive"}
        for name, v in prof["variables"].items():
            keys = ("majority", "share", "lift") if v["kind"] == "categorical" else ("mean", "z")
            row.update({f"{name}:{key}": v.get(key, np.nan) for key in keys})
        rows.append(row)
    return pd.DataFrame(rows)


def _triple(summary: dict, variable: str, key: str) -> str:
    parts = []
    for fs in summary["feature_sets"].values():
        row = next((r for r in fs["variables"] if r["variable"] == variable), {})
        parts.append(_fmt(row.get(key)))
    return " / ".join(parts)


def markdown(summary: dict, profiles: list[dict]) -> str:
    """The report as markdown text."""
    sets = list(summary["feature_sets"])
    set_titles = " / ".join(FEATURE_SET_TITLES.get(s, s) for s in sets)
    trained = summary["feature_sets"]["trained"]
    lines = [
        "# Clustering report",
        "",
        f"- run: `{summary.get('run', '')}`",
        f"- data: `{summary.get('data', '')}` ({summary['n']} examples)",
        f"- layer: `{summary['layer']}` ({summary['feature_dim']} features, pooling "
        f"{summary.get('pooling', 'mean')})",
        f"- clustering: {summary['method']} on {summary['cluster_space']}"
        f"{' of standardised features' if summary.get('standardize') else ''}, "
        f"k = {trained['k']} ({trained['k_selection']}); 2-D map: {summary['reduce']}",
        "",
        "## Cluster quality",
        "",
        "| features | k | silhouette ↑ | Davies–Bouldin ↓ | Calinski–Harabasz ↑ | noise |",
        "|---|---|---|---|---|---|",
    ]
    for name, fs in summary["feature_sets"].items():
        s = fs["internal"]
        lines.append(
            f"| {FEATURE_SET_TITLES.get(name, name)} | {fs['k']} | {_fmt(s['silhouette'])} | "
            f"{_fmt(s['davies_bouldin'])} | {_fmt(s['calinski_harabasz'], 1)} | "
            f"{_fmt(fs.get('noise_fraction', 0.0))} |"
        )
    rows = trained["variables"]
    cats = [r for r in rows if r["kind"] == "categorical"]
    conts = [r for r in rows if r["kind"] == "continuous"]
    lines += ["", "## What the clusters and the embedding capture", "",
              f"Each cell: {set_titles}."]
    if cats:
        lines += [
            "",
            "| hidden variable | ARI | NMI | probe balanced accuracy (chance) | clusters capture | embedding captures |",
            "|---|---|---|---|---|---|",
        ]
        for r in cats:
            c, e = verdicts(r)
            lines.append(
                f"| {r['variable']} | {_triple(summary, r['variable'], 'ari')} | "
                f"{_triple(summary, r['variable'], 'nmi')} | "
                f"{_triple(summary, r['variable'], 'probe_accuracy')} ({_fmt(r.get('chance'))}) | "
                f"{c} | {e} |"
            )
    if conts:
        lines += [
            "",
            "| hidden variable | group | n | MI (nats) | η² | probe R² | clusters capture | embedding captures |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in conts:
            c, e = verdicts(r)
            lines.append(
                f"| {r['variable']} | {r['group']}"
                f"{' (axial: cos 2a, sin 2a)' if r.get('scored_on') else ''} | {r['n']} | "
                f"{_triple(summary, r['variable'], 'mi')} | "
                f"{_triple(summary, r['variable'], 'eta2')} | "
                f"{_triple(summary, r['variable'], 'probe_r2')} | {c} | {e} |"
            )
    if not rows:
        lines += ["", "The data carries no hidden variables (no class, targets or nuisances)."]
    lines += [
        "",
        "## What each cluster captures (trained features)",
        "",
        "| cluster | size | captures |",
        "|---|---|---|",
    ]
    for prof in profiles:
        name = "noise" if prof["cluster"] == -1 else str(prof["cluster"])
        lines.append(
            f"| {name} | {prof['size']} | {'; '.join(cluster_captures(prof)) or 'nothing distinctive'} |"
        )
    lines += [
        "",
        "## How to read this",
        "",
        "ARI / NMI: agreement of the clusters with a categorical variable (1 = identical, "
        "0 = chance). MI: mutual information between cluster label and a continuous variable; "
        "η²: fraction of that variable's variance explained by cluster membership. Probe: "
        "5-fold cross-validated linear model (ridge regression, or logistic regression for "
        "categories) from the whole feature vector, so it measures what the embedding "
        "carries linearly, independent of the clustering. Rows where a variable is undefined "
        "(NaN, e.g. the axion mass outside the axion class) are left out of its scores. "
        "Angles are orientations that repeat every half turn; they are scored on "
        "cos 2a and sin 2a (the mean of the two).",
        "",
        f"Verdicts: clusters capture a categorical variable when NMI ≥ {CLUSTER_CAT[0]} "
        f"(partly ≥ {CLUSTER_CAT[1]}), a continuous one when η² ≥ {CLUSTER_CONT[0]} "
        f"(partly ≥ {CLUSTER_CONT[1]}); the embedding captures a categorical variable when "
        f"the probe closes ≥ {PROBE_CAT[0]:.0%} of the gap from chance to perfect "
        f"(partly ≥ {PROBE_CAT[1]:.0%}), a continuous one when probe R² ≥ {PROBE_CONT[0]} "
        f"(partly ≥ {PROBE_CONT[1]}). A cluster captures a class when it is ≥ "
        f"{CAPTURE_SHARE:.0%} that class and ≥ {CAPTURE_LIFT}× its overall share, and a "
        f"continuous variable when its mean lies ≥ {CAPTURE_Z} standard deviations from the "
        "overall mean. Verdicts are for the trained features; compare the baseline columns to "
        "see what training added.",
    ]
    files = summary.get("files", {})
    if files:
        lines += ["", "## Files", ""]
        lines += [f"- {key}: `{os.path.basename(path)}`" if key != "plots" else
                  "- plots: " + ", ".join(f"`plots/{os.path.basename(p)}`" for p in path)
                  for key, path in files.items()]
    return "\n".join(lines) + "\n"


def write_report(out_dir, summary: dict, profiles: list[dict]) -> dict[str, str]:
    """Write `scores.csv`, `clusters.csv` and `report.md` to `out_dir`; return their paths."""
    paths = {
        "scores": os.path.join(out_dir, "scores.csv"),
        "clusters": os.path.join(out_dir, "clusters.csv"),
        "report": os.path.join(out_dir, "report.md"),
    }
    score_table(summary).to_csv(paths["scores"], index=False, float_format="%.6g")
    cluster_table(profiles).to_csv(paths["clusters"], index=False, float_format="%.6g")
    with open(paths["report"], "w", encoding="utf-8") as fh:
        fh.write(markdown(summary, profiles))
    return paths

"""The clustering analysis end to end: features -> reduce -> cluster -> scores -> report.

- `analyse_features(features, variables, ...)`: one feature set, no I/O.
- `cluster_model(model, examples, out_dir, ...)`: any Keras model and `Examples`, with the
  raw-pixel and random-weight baselines, writing every file.
- `cluster_run(run_dir, data, out_dir, ...)`: the same for a training run folder and any
  data set `load_examples` reads (what `deeplense cluster` and the quickstart call).

How each feature set is clustered: features are centred (and, with `standardize=True`,
scaled to unit variance per unit; never for raw pixels, which share one unit) and reduced
by PCA to `pca_components` dimensions; the clustering runs there (`cluster_space="pca"`) or on the 2-D map
(`cluster_space="map"`). When k is not given, the trained features choose it (BIC or
silhouette, see `methods`) and the baselines are clustered with the same k, so ARI and NMI
compare like with like (HDBSCAN: each finds its own). Probes always use the full features.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from deeplense_tf.clustering import baselines as baselines_mod
from deeplense_tf.clustering.embedding import (
    DEFAULT_LAYER,
    Embeddings,
    check_images,
    embedding_model,
    extract_features,
    save_embeddings,
)
from deeplense_tf.clustering.methods import METHODS, cluster
from deeplense_tf.clustering.plots import plot_feature_set_maps, plot_maps, plot_montage
from deeplense_tf.clustering.reduce import REDUCERS, pca, reduce_2d
from deeplense_tf.clustering.report import cluster_captures, write_report
from deeplense_tf.clustering.scores import (
    cluster_profiles,
    hidden_variables,
    internal_scores,
    score_variables,
)
from deeplense_tf.errors import ConfigError, DataError

CLUSTER_SPACES = ("pca", "map")
DEFAULT_PCA_COMPONENTS = 16


def _log(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def check_options(method: str, k: int | None, reduce: str, cluster_space: str, n: int) -> None:
    """`ConfigError` for an unknown method / reduction / space or a k that cannot work."""
    if method not in METHODS:
        raise ConfigError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if reduce not in REDUCERS:
        raise ConfigError(f"--reduce {reduce!r} is not one of {', '.join(REDUCERS)}")
    if cluster_space not in CLUSTER_SPACES:
        raise ConfigError(f"cluster_space {cluster_space!r} is not one of pca, map")
    if k is not None and method == "hdbscan":
        raise ConfigError("--k does not apply to hdbscan, which finds the number of clusters")
    if k is not None and k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}")
    if k is not None and k > n:
        raise ConfigError(f"--k {k} is larger than the number of examples ({n})")
    if n < 3:
        raise ConfigError(f"clustering needs at least 3 examples, got {n}")


def analyse_features(
    features: np.ndarray,
    variables,
    *,
    method: str = "kmeans",
    k: int | None = None,
    reduce: str = "pca",
    cluster_space: str = "pca",
    pca_components: int = DEFAULT_PCA_COMPONENTS,
    scale: bool = False,
    seed: int = 0,
    min_cluster_size: int | None = None,
    make_map: bool = True,
    probes: bool = True,
) -> dict:
    """Cluster one feature set `[N, D]` and score it against `variables`.

    Returns `labels` `[N]`, `map` `[N, 2]` (or None), `k`, `k_selection`, `internal`
    (silhouette, Davies-Bouldin, Calinski-Harabasz in the clustering space),
    `variables` (rows of `scores.score_variables`), `noise_fraction`, `details`.
    """
    check_options(method, k, reduce, cluster_space, len(features))
    coords = reduce_2d(features, reduce, seed, scale=scale) if make_map or cluster_space == "map" else None
    space = coords if cluster_space == "map" else pca(features, pca_components, seed, scale)
    result = cluster(space, method, k, seed=seed, min_cluster_size=min_cluster_size)
    return {
        "labels": result.labels,
        "map": coords,
        "k": result.k,
        "k_selection": result.selection,
        "internal": internal_scores(space, result.labels, seed=seed),
        "variables": score_variables(features, result.labels, variables, seed, probes=probes),
        "noise_fraction": float(np.mean(result.labels == -1)),
        "details": result.details,
    }


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _write_assignments(path, examples, analyses: dict) -> str:
    import pandas as pd

    table = {}
    if getattr(examples, "class_id", None) is not None:
        table["class_id"] = np.asarray(examples.class_id)
    for name, a in analyses.items():
        table[f"cluster_{name}"] = a["labels"]
        if a["map"] is not None:
            table[f"map_x_{name}"], table[f"map_y_{name}"] = a["map"][:, 0], a["map"][:, 1]
    for group, values in (("target", examples.targets), ("nuisance", examples.nuisance)):
        for key, v in (values or {}).items():
            table[f"{group}/{key}"] = np.asarray(v)
    pd.DataFrame(table).to_csv(path, index_label="row", float_format="%.6g")
    return str(path)


def cluster_model(
    model,
    examples,
    out_dir,
    *,
    layer: str | None = None,
    pooling: str = "mean",
    method: str = "kmeans",
    k: int | None = None,
    reduce: str = "tsne",
    cluster_space: str = "pca",
    pca_components: int = DEFAULT_PCA_COMPONENTS,
    standardize: bool = False,
    min_cluster_size: int | None = None,
    baselines: bool = True,
    random_model=None,
    batch_size: int = 256,
    seed: int = 0,
    montage_per_cluster: int = 8,
    run: str = "",
    trained_targets=(),
    progress: bool = True,
) -> dict:
    """Extract, cluster, score and report the features of `model` at `layer` on `examples`.

    `examples` has `images` `[N, H, W, 1]`, `class_id`, `targets`, `nuisance`,
    `class_names`, `source` (see `deeplense_tf.data.load_examples`). `random_model` is the
    random-weight baseline (default: `baselines.random_weight_model(model, seed=seed)`).
    `trained_targets` names the targets the model was trained on (marked in the report).
    Writes to `out_dir`: `embeddings.npz`, `assignments.csv`, `scores.csv`,
    `clusters.csv`, `report.md`, `summary.json`, `plots/*.png`. Returns the summary dict
    (scores per feature set, the chosen k, `files`: every path written).
    """
    source = str(getattr(examples, "source", "data"))
    images = validate(model, examples, layer=layer, pooling=pooling, method=method, k=k,
                      reduce=reduce, cluster_space=cluster_space)
    n = len(images)
    os.makedirs(os.path.join(out_dir, "plots"), exist_ok=True)
    t0 = time.perf_counter()
    layer_name = layer or DEFAULT_LAYER
    variables = hidden_variables(examples)
    for var in variables:
        if var.group == "target" and var.name in set(trained_targets):
            var.group = "trained target"
    if not any(v.kind == "categorical" and v.group == "class" for v in variables):
        _log(f"{source}: no substructure-class variation in these {n} examples; "
             "ARI/NMI against the class are not computed", progress)

    features = extract_features(model, images, layer=layer_name, pooling=pooling,
                                batch_size=batch_size, progress=progress, source=source)
    feature_sets = {"trained": (features, standardize)}
    if baselines:
        rand = random_model if random_model is not None else baselines_mod.random_weight_model(
            model, seed=seed)
        feature_sets["random_weights"] = (
            extract_features(rand, images, layer=layer_name, pooling=pooling,
                             batch_size=batch_size, progress=progress,
                             desc="random-weight baseline", source=source),
            standardize,
        )
        feature_sets["raw_pixels"] = (baselines_mod.raw_pixel_features(images, seed=seed), False)

    options = dict(method=method, reduce=reduce, cluster_space=cluster_space,
                   pca_components=pca_components, seed=seed, min_cluster_size=min_cluster_size)
    analyses = {}
    chosen_k = k
    for name, (feats, scale) in feature_sets.items():
        _log(f"clustering {name} features {feats.shape} ({method}, map: {reduce})", progress)
        analyses[name] = analyse_features(feats, variables, k=chosen_k, scale=scale, **options)
        if name != "trained" and k is None and method != "hdbscan":
            analyses[name]["k_selection"] = "as trained"
        if name == "trained" and method != "hdbscan":
            # Baselines use the trained features' k so their ARI/NMI compare at equal k.
            chosen_k = analyses[name]["k"]

    trained = analyses["trained"]
    profiles = cluster_profiles(trained["labels"], variables)
    plots_dir = os.path.join(out_dir, "plots")
    plot_paths = [
        plot_maps(trained["map"], trained["labels"], variables,
                  os.path.join(plots_dir, "map_trained.png"),
                  f"{layer_name} features, {reduce} map, {method} clusters"),
        plot_montage(images, trained["labels"], os.path.join(plots_dir, "montage.png"),
                     per_cluster=montage_per_cluster, seed=seed,
                     captions={p["cluster"]: (cluster_captures(p) or [""])[0] for p in profiles}),
    ]
    if len(analyses) > 1:
        colour = next((v for v in variables if v.group == "class"), trained["labels"])
        plot_paths.append(plot_feature_set_maps(
            {name: a["map"] for name, a in analyses.items()}, colour,
            os.path.join(plots_dir, "map_feature_sets.png"),
            f"{reduce} maps coloured by " + ("class" if colour is not trained["labels"]
                                             else "trained clusters"),
        ))

    emb_path = save_embeddings(os.path.join(out_dir, "embeddings.npz"),
                               Embeddings.from_examples(features, examples, layer_name))
    files = {
        "embeddings": emb_path,
        "assignments": _write_assignments(os.path.join(out_dir, "assignments.csv"),
                                          examples, analyses),
    }
    summary = {
        "run": str(run),
        "data": source,
        "n": n,
        "layer": layer_name,
        "pooling": pooling,
        "feature_dim": int(features.shape[1]),
        "method": method,
        "reduce": reduce,
        "cluster_space": (f"{pca_components} principal components"
                          if cluster_space == "pca" else f"the {reduce} map"),
        "standardize": standardize,
        "seed": seed,
        "k": trained["k"],
        "feature_sets": {
            name: {key: a[key] for key in ("k", "k_selection", "internal", "variables",
                                           "noise_fraction", "details")}
            for name, a in analyses.items()
        },
        "clusters": profiles,
    }
    files.update({"summary": os.path.join(out_dir, "summary.json")})
    report_paths = write_report(out_dir, {**summary, "files": {**files, "plots": plot_paths}},
                                profiles)
    files.update(report_paths)
    files["plots"] = plot_paths
    summary["files"] = files
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    with open(files["summary"], "w", encoding="utf-8") as fh:
        json.dump(_jsonable(summary), fh, indent=2)
    return summary


def _load_data(data, split: str, limit: int | None):
    if hasattr(data, "images"):
        if limit is not None and hasattr(data, "subset"):
            return data.subset(slice(0, int(limit)))
        if limit is not None:
            from dataclasses import replace

            sl = slice(0, int(limit))
            return replace(
                data,
                images=data.images[sl],
                class_id=None if data.class_id is None else data.class_id[sl],
                targets={k: v[sl] for k, v in data.targets.items()},
                nuisance={k: v[sl] for k, v in data.nuisance.items()},
            )
        return data
    from deeplense_tf.data import load_examples

    return load_examples(str(data), split=split, limit=limit)


def validate(model, examples, *, layer=None, pooling="mean", method="kmeans", k=None,
             reduce="tsne", cluster_space="pca", **_ignored) -> np.ndarray:
    """Every check that needs no heavy work (image shape, layer, options), so bad input
    fails in seconds. Returns the images as float32 `[N, H, W, C]`."""
    source = str(getattr(examples, "source", "data"))
    images = check_images(model, examples.images, source)
    check_options(method, k, reduce, cluster_space, len(images))
    embedding_model(model, layer or DEFAULT_LAYER, pooling)
    return images


def cluster_run(run_dir, data, out_dir, **options) -> dict:
    """Cluster the features of a training run on a data set; see `cluster_model`.

    `data`: a path `load_examples` reads (simulated data directory, DeepLense `.npy`
    folder, `.npz`, `.h5`) or an `Examples`. Options: `split` ("test"), `limit` (first N
    examples), `layer`, `pooling`, `method`, `k`, `reduce`, `cluster_space`,
    `pca_components`, `standardize`, `min_cluster_size`, `baselines`, `batch_size`, `seed`,
    `montage_per_cluster`, `progress`. The random-weight baseline is the run's model
    rebuilt from its `config.yaml` with fresh weights seeded by `seed`.
    """
    from deeplense_tf.runs import Run

    split = options.pop("split", "test")
    limit = options.pop("limit", None)
    if limit is not None and int(limit) < 1:
        raise ConfigError(f"--limit must be positive, got {limit}")
    run = Run.load(run_dir)
    examples = _load_data(data, split, limit)
    if len(examples.images) == 0:
        raise DataError(f"{data}: no examples in split {split!r}")
    validate(run.model, examples, **options)  # fail fast, before building the baseline
    if options.get("baselines", True) and options.get("random_model") is None:
        options["random_model"] = baselines_mod.random_weight_model(
            run.model, config=run.config, targets=run.targets, seed=options.get("seed", 0))
    return cluster_model(run.model, examples, out_dir, run=str(run_dir),
                         trained_targets=run.targets, **options)

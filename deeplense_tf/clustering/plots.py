"""Figures of a clustering: 2-D maps coloured by cluster and by each hidden variable, the
same map for each feature set side by side, and a montage of example images per cluster.
All functions write a PNG and return its path (matplotlib's non-interactive Agg backend).
"""

from __future__ import annotations

import math

import numpy as np

from deeplense_tf.clustering.scores import NOISE, HiddenVariable

MAX_MONTAGE_CLUSTERS = 12


def _figure(rows, cols, figsize, **kwargs):
    """A figure drawn off-screen: never touches pyplot, so a notebook's backend is left alone."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, **kwargs)


def _colormap(name):
    import matplotlib

    return matplotlib.colormaps[name]


def _point_size(n: int) -> float:
    return float(np.clip(2000 / max(n, 1), 2, 30))


def _scatter_categorical(ax, coords, codes, names=None, title=""):
    codes = np.asarray(codes)
    rows = np.isfinite(codes) if codes.dtype.kind == "f" else np.ones(len(codes), bool)
    if (~rows).any():
        ax.scatter(*coords[~rows].T, s=_point_size(len(coords)), c="lightgrey", label="n/a")
    cmap = _colormap("tab10" if len(np.unique(codes[rows])) <= 10 else "tab20")
    for i, code in enumerate(np.unique(codes[rows])):
        members = rows & (codes == code)
        if code == NOISE and names is None:
            label, color = "noise", "lightgrey"
        else:
            label = names[int(code)] if names and 0 <= int(code) < len(names) else str(int(code))
            color = cmap(i % cmap.N)
        ax.scatter(*coords[members].T, s=_point_size(len(coords)), color=color, label=label,
                   linewidths=0)
    ax.legend(fontsize=7, markerscale=2, loc="best", frameon=False)
    ax.set_title(title, fontsize=9)


def _scatter_continuous(ax, fig, coords, values, title=""):
    values = np.asarray(values, dtype=np.float64)
    rows = np.isfinite(values)
    size = _point_size(len(coords))
    if (~rows).any():
        ax.scatter(*coords[~rows].T, s=size, c="lightgrey", linewidths=0)
    sc = ax.scatter(*coords[rows].T, s=size, c=values[rows], cmap="viridis", linewidths=0)
    fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02)
    ax.set_title(title + ("  (grey: n/a)" if (~rows).any() else ""), fontsize=9)


def plot_maps(coords: np.ndarray, labels: np.ndarray, variables: list[HiddenVariable], path,
              title: str = "") -> str:
    """Panels of the 2-D map `coords` `[N, 2]`: by cluster, then by each hidden variable."""
    panels = 1 + len(variables)
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig, axes = _figure(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    _scatter_categorical(axes[0, 0], coords, labels, title="clusters")
    for ax, var in zip(axes.flat[1:], variables):
        label = f"{var.group}: {var.name}" if var.group != "class" else "substructure class"
        if var.kind == "categorical":
            _scatter_categorical(ax, coords, var.values, var.categories or None, label)
        else:
            _scatter_continuous(ax, fig, coords, var.values, label)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[panels:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def plot_feature_set_maps(maps: dict[str, np.ndarray], colour: HiddenVariable | np.ndarray,
                          path, title: str = "") -> str:
    """One 2-D map per feature set (trained, random weights, raw pixels), same colouring."""
    fig, axes = _figure(1, len(maps), figsize=(4.2 * len(maps), 3.8), squeeze=False)
    for ax, (name, coords) in zip(axes[0], maps.items()):
        if isinstance(colour, HiddenVariable) and colour.kind == "continuous":
            _scatter_continuous(ax, fig, coords, colour.values, name)
        elif isinstance(colour, HiddenVariable):
            _scatter_categorical(ax, coords, colour.values, colour.categories or None, name)
        else:
            _scatter_categorical(ax, coords, colour, title=name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def _display(image: np.ndarray) -> np.ndarray:
    """asinh stretch of one image scaled to its own peak, so faint arcs stay visible."""
    img = np.asarray(image, dtype=np.float64)[..., 0]
    peak = max(np.abs(img).max(), 1e-12)
    return np.arcsinh(img / (0.02 * peak)) / np.arcsinh(1 / 0.02)


def plot_montage(images: np.ndarray, labels: np.ndarray, path, per_cluster: int = 8,
                 max_clusters: int = MAX_MONTAGE_CLUSTERS, seed: int = 0,
                 captions: dict[int, str] | None = None) -> str:
    """Rows of up to `per_cluster` random example images from each of the largest
    `max_clusters` clusters (noise last), each row titled with the cluster's id and size."""
    rng = np.random.default_rng(seed)
    ids, sizes = np.unique(labels, return_counts=True)
    order = sorted(zip(ids.tolist(), sizes.tolist()), key=lambda t: (t[0] == NOISE, -t[1]))
    order = order[:max_clusters]
    cols = max(1, min(per_cluster, max(s for _, s in order)))
    fig, axes = _figure(len(order), cols, figsize=(1.2 * cols + 1.6, 1.3 * len(order)),
                             squeeze=False)
    for r, (cluster_id, size) in enumerate(order):
        members = np.flatnonzero(labels == cluster_id)
        chosen = rng.choice(members, size=min(cols, len(members)), replace=False)
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(chosen):
                ax.imshow(_display(images[chosen[c]]), cmap="magma", vmin=-0.1, vmax=1.0)
            else:
                ax.axis("off")
        name = "noise" if cluster_id == NOISE else f"cluster {cluster_id}"
        caption = (captions or {}).get(cluster_id, "")
        axes[r, 0].set_ylabel(f"{name}\nn={size}" + (f"\n{caption}" if caption else ""),
                              fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return str(path)

"""Tiny data sets on disk for the data tests, written with `schema.encode_example`.

Independent of the simulator: images are an elongated Gaussian blob whose centre and
orientation are the example's targets, so a D4 transform of an image must come with the
matching transform of its vector and spin-2 targets.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import types
from pathlib import Path

import numpy as np

from deeplense_tf.data import schema

SIZE = 16  # pixels per side
PIXEL_SCALE = 0.1  # arcsec per pixel

TARGET_KINDS = {
    "theta_e_arcsec": {"kind": "scalar"},
    "source_x_arcsec": {"kind": "vector", "partner": "source_y_arcsec", "component": 0},
    "source_y_arcsec": {"kind": "vector", "partner": "source_x_arcsec", "component": 1},
    "lens_e1": {"kind": "spin2", "partner": "lens_e2", "component": 0},
    "lens_e2": {"kind": "spin2", "partner": "lens_e1", "component": 1},
    "log10_m_axion_ev": {"kind": "scalar"},
}
TARGETS = list(TARGET_KINDS)
NUISANCES = ["exposure_s"]


def pixel_coordinates(size: int = SIZE, pixel_scale: float = PIXEL_SCALE):
    """(x, y) grids in arcsec of an image indexed [row, col]: col <-> x, row <-> y."""
    axis = (np.arange(size) - (size - 1) / 2) * pixel_scale
    x, y = np.meshgrid(axis, axis)  # x varies along columns, y along rows
    return x, y


def blob_image(x0, y0, e1, e2, size: int = SIZE, amplitude: float = 1.0) -> np.ndarray:
    """An elliptical Gaussian centred at (x0, y0) arcsec with ellipticity (e1, e2); [H, W, 1]."""
    x, y = pixel_coordinates(size)
    # Ellipse axes from (e1, e2) = |e| (cos 2 phi, sin 2 phi); q = (1 - |e|) / (1 + |e|).
    modulus = math.hypot(e1, e2)
    phi = 0.5 * math.atan2(e2, e1)
    q = (1 - modulus) / (1 + modulus)
    dx, dy = x - x0, y - y0
    u = dx * math.cos(phi) + dy * math.sin(phi)
    v = -dx * math.sin(phi) + dy * math.cos(phi)
    sigma = 0.25
    image = amplitude * np.exp(-0.5 * ((u / sigma) ** 2 + (v / (q * sigma)) ** 2))
    return image[..., np.newaxis].astype(np.float32)


def make_examples(count: int, seed: int = 0, size: int = SIZE):
    """(images [N, H, W, 1], targets {name: [N]}, class_id [N], nuisance {name: [N]})."""
    rng = np.random.default_rng(seed)
    class_id = np.arange(count) % len(schema.CLASS_NAMES)
    targets = {
        "theta_e_arcsec": rng.uniform(0.8, 1.4, count),
        "source_x_arcsec": rng.uniform(-0.4, 0.4, count),
        "source_y_arcsec": rng.uniform(-0.4, 0.4, count),
        "lens_e1": rng.uniform(-0.3, 0.3, count),
        "lens_e2": rng.uniform(-0.3, 0.3, count),
        # Only the axion class has a mass.
        "log10_m_axion_ev": np.where(class_id == 2, rng.uniform(-24, -22, count), np.nan),
    }
    images = np.stack(
        [
            blob_image(
                targets["source_x_arcsec"][i],
                targets["source_y_arcsec"][i],
                targets["lens_e1"][i],
                targets["lens_e2"][i],
                size=size,
                amplitude=targets["theta_e_arcsec"][i],
            )
            for i in range(count)
        ]
    )
    nuisance = {"exposure_s": rng.uniform(1000, 3000, count)}
    targets = {k: v.astype(np.float32) for k, v in targets.items()}
    nuisance = {k: v.astype(np.float32) for k, v in nuisance.items()}
    return images, targets, class_id.astype(np.int64), nuisance


def _stats(values) -> dict:
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def write_dataset(
    directory,
    counts=None,
    shards=None,
    seed: int = 0,
    size: int = SIZE,
    exact_symmetries=("identity", "rot180"),
    images_override=None,
) -> Path:
    """Write a tiny simulated-style data set (shards + manifest.json) and return its folder.

    counts: {split: n}; shards: {split: number of shards}. `images_override(split, images)`
    may return modified images (to plant NaNs, say) before they are written.
    """
    import tensorflow as tf

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    counts = counts or {"train": 12, "val": 6, "test": 6}
    shards = shards or {"train": 2}
    manifest = {
        "format_version": schema.FORMAT_VERSION,
        "preset": "test-blobs",
        "seed": seed,
        "classes": list(schema.CLASS_NAMES),
        "image_shape": [size, size, 1],
        "pixel_scale_arcsec": PIXEL_SCALE,
        "targets": TARGETS,
        "nuisances": NUISANCES,
        "target_kinds": TARGET_KINDS,
        "exact_symmetries": list(exact_symmetries),
        "splits": {},
        "target_stats": {},
        "image_stats": {},
        "versions": {},
        "created": "2025-01-01T00:00:00",
    }
    for offset, (split, count) in enumerate(counts.items()):
        images, targets, class_id, nuisance = make_examples(
            count, seed=seed * 10 + offset, size=size
        )
        if images_override is not None:
            images = images_override(split, images)
        num_shards = shards.get(split, 1)
        names = [schema.shard_name(split, k, num_shards) for k in range(num_shards)]
        for k, name in enumerate(names):
            with tf.io.TFRecordWriter(str(directory / name)) as writer:
                for i in range(k, count, num_shards):
                    writer.write(
                        schema.encode_example(
                            images[i],
                            i,
                            int(class_id[i]),
                            {t: float(v[i]) for t, v in targets.items()},
                            {t: float(v[i]) for t, v in nuisance.items()},
                        )
                    )
        manifest["splits"][split] = {"count": count, "shards": names}
        if split == "train":
            manifest["target_stats"] = {t: _stats(v) for t, v in targets.items()}
    (directory / schema.MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
    return directory


# --- DeepLense-style .npy files as numpy writes them ---------------------------------------


class _Numpy1Pickler(pickle._Pickler):
    """Python's own pickler, naming numpy's helpers as numpy 1.x did (`numpy.core.*`).

    numpy 2 moved `numpy.core` to `numpy._core`; files written with numpy 1.x name the old
    module. Only the module names differ, so this reproduces those files exactly.
    """

    def save_global(self, obj, name=None):
        name = name or getattr(obj, "__qualname__", None) or obj.__name__
        module = pickle.whichmodule(obj, name)
        if module.startswith("numpy._core"):
            module = "numpy.core" + module[len("numpy._core") :]
        if self.proto >= 4:
            self.save(module)
            self.save(name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)

    # The base class dispatches Python functions (numpy's `_frombuffer`) to its own
    # save_global, not to the override.
    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[types.FunctionType] = save_global


def pickle_bytes(value, protocol: int, numpy1_names: bool = False) -> bytes:
    """`pickle.dumps(value, protocol)`, optionally with numpy 1.x module names."""
    if not numpy1_names:
        return pickle.dumps(value, protocol=protocol)
    buffer = io.BytesIO()
    _Numpy1Pickler(buffer, protocol=protocol).dump(value)
    return buffer.getvalue()


def deeplense_entry(image, mass, row: bool = False) -> np.ndarray:
    """`np.array([image, mass], dtype=object)` (shape (2,)), or the (1, 2) row vector."""
    entry = np.array([[image, mass]] if row else [image, mass], dtype=object)
    assert entry.shape == ((1, 2) if row else (2,))
    return entry


def write_pickled_npy(path, array, protocol: int = 4, numpy1_names: bool = False) -> Path:
    """Write an object array as `np.save(..., allow_pickle=True)` does (header + pickle).

    numpy 2's `np.save` pickles with protocol 4, numpy 1.x's with protocol 3; other
    protocols come from code that pickles the array itself into a `.npy` container.
    """
    path = Path(path)
    with open(path, "wb") as handle:
        header = {"descr": "|O", "fortran_order": False, "shape": array.shape}
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(pickle_bytes(array, protocol, numpy1_names))
    return path

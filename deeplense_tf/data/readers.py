"""Readers: any supported data set -> `Examples` in memory, with validation.

Sources (see docs/data-formats.md):

- a simulated data directory (`manifest.json` + TFRecord shards), read with tf.data;
- a DeepLense-style folder of `.npy` files, each a pickled object array `[image, m]` with
  `m` the axion mass in eV (parsed by `safe_npy` without unpickling; see docs/security.md);
- an `.npz` file or an HDF5 (`.h5`, `.hdf5`) file with `images` and one array per target.

Every problem with the input is a `DataError` whose message names the file and what is
wrong with it.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deeplense_tf.data import schema
from deeplense_tf.data.safe_npy import NpzArchive, load_npy
from deeplense_tf.errors import DataError
from deeplense_tf.units import log10_axion_mass_ev

DEEPLENSE_TARGET = "log10_m_axion_ev"

# Class folder names in the DeepLense repositories (ML4SCI/DeepLense and its projects,
# DeepLenseSim, unsupervised-lensing) and ours, compared after lower-casing and turning
# spaces and hyphens into underscores: Models I-IV use `no_sub` / `cdm` / `axion`; the
# classification test set uses `no` / `sphere` / `vort`; the domain-adaptation sets
# `no` / `spherical` / `vortex`; the binary substructure sets `no_sub` / `sub`; plots and
# tables spell out "No Substructure". A binary set's `sub` (some substructure) is read as
# `cdm`, the substructure class of the three.
CLASS_FOLDER_ALIASES = {
    "no_sub": "no_sub",
    "nosub": "no_sub",
    "no": "no_sub",
    "no_substructure": "no_sub",
    "cdm": "cdm",
    "sub": "cdm",
    "sphere": "cdm",
    "spherical": "cdm",
    "subhalo": "cdm",
    "axion": "axion",
    "vort": "axion",
    "vortex": "axion",
}

# The fixed DeepLense lens (SIE e1=0.1, shear g1=0.05, source e1=-0.1, e2=0.1) is symmetric
# only under the 180-degree rotation (the source ellipticity breaks the mirrors).
DEEPLENSE_EXACT_SYMMETRIES = ("identity", "rot180")

_REQUIRED_MANIFEST_KEYS = ("format_version", "image_shape", "targets", "splits")
_NPZ_RESERVED = ("images", "class_id", "class_names", "metadata")


@dataclass
class Examples:
    """A data set in memory.

    images: float32 `[N, H, W, 1]` in the instrument's units (no normalisation).
    targets: `{name: float array [N]}`, NaN where a target is undefined for an example.
    class_id: int64 `[N]` indices into `class_names`, or None when unknown.
    nuisance: `{name: float array [N]}` drawn nuisance parameters (may be empty).
    source: where the examples came from, for messages.
    metadata: manifest-like facts about the source: `target_kinds`, `exact_symmetries`,
        `target_stats`, `pixel_scale_arcsec` where known (the full manifest for a
        simulated data directory).
    """

    images: np.ndarray
    targets: dict[str, np.ndarray]
    class_id: np.ndarray | None = None
    nuisance: dict[str, np.ndarray] = field(default_factory=dict)
    class_names: tuple[str, ...] = schema.CLASS_NAMES
    source: str = ""
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices) -> Examples:
        """The examples at `indices` (an index array, a boolean mask or a slice)."""
        return Examples(
            images=self.images[indices],
            targets={k: v[indices] for k, v in self.targets.items()},
            class_id=None if self.class_id is None else self.class_id[indices],
            nuisance={k: v[indices] for k, v in self.nuisance.items()},
            class_names=self.class_names,
            source=self.source,
            metadata=self.metadata,
        )


# --- validation ---------------------------------------------------------------------------


def validate_images(images, expected_hw=None, source: str = "images") -> np.ndarray:
    """Check a batch of images and return it as float32 `[N, H, W, 1]`.

    Accepts `[N, H, W]` or `[N, H, W, 1]` of any real dtype. `expected_hw` is the
    (height, width) in pixels a manifest or a model requires. Raises DataError naming
    `source` for a wrong rank, channel count or size, an empty batch, a non-numeric
    dtype, or NaN / infinite pixels (naming the first bad example's index).
    """
    array = np.asarray(images)
    if array.dtype.kind not in "fiu":
        raise DataError(f"{source}: images must be real numbers, got dtype {array.dtype}")
    if array.ndim == 3:
        array = array[..., np.newaxis]
    if array.ndim != 4:
        raise DataError(
            f"{source}: images must be [N, H, W] or [N, H, W, 1], got shape {tuple(np.shape(images))}"
        )
    if array.shape[-1] != 1:
        raise DataError(
            f"{source}: images must have one channel, got shape {tuple(array.shape)} "
            f"({array.shape[-1]} channels)"
        )
    if array.shape[0] == 0:
        raise DataError(f"{source}: no images")
    if expected_hw is not None:
        expected = tuple(int(v) for v in expected_hw)
        if tuple(array.shape[1:3]) != expected:
            raise DataError(
                f"{source}: images are {array.shape[1]}x{array.shape[2]} pixels but "
                f"{expected[0]}x{expected[1]} are expected"
            )
    array = array.astype(np.float32, copy=False)
    finite = np.isfinite(array).all(axis=(1, 2, 3))
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DataError(
            f"{source}: example {bad[0]} has NaN or infinite pixels "
            f"({len(bad)} of {len(array)} examples affected)"
        )
    return array


def check_target_names(requested, available, source: str) -> list[str]:
    """`requested` as a list (None = all of `available`); DataError listing valid names."""
    available = list(available)
    if requested is None:
        return available
    if isinstance(requested, str):
        requested = [requested]
    requested = list(requested)
    unknown = [name for name in requested if name not in available]
    if unknown:
        valid = ", ".join(available) if available else "(none)"
        raise DataError(
            f"{source}: unknown target {', '.join(map(repr, unknown))}; valid targets: {valid}"
        )
    if not requested:
        raise DataError(f"{source}: no targets chosen; valid targets: {', '.join(available)}")
    return requested


# --- manifest -----------------------------------------------------------------------------


def read_manifest(directory) -> dict:
    """Read and check `DIR/manifest.json`; optional keys get their empty defaults.

    Raises DataError naming the folder when it or its manifest is missing, and the file
    when the manifest is not valid JSON, lacks a required key or is from a newer format.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such data directory")
    path = directory / schema.MANIFEST_NAME
    if not path.is_file():
        raise DataError(
            f"{directory}: no {schema.MANIFEST_NAME} (not a simulated data set, or "
            "`deeplense simulate` has not finished writing it)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: corrupt manifest ({error})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: corrupt manifest (expected a JSON object)")
    missing = [key for key in _REQUIRED_MANIFEST_KEYS if key not in manifest]
    if missing:
        raise DataError(f"{path}: corrupt manifest (missing {', '.join(missing)})")
    version = manifest["format_version"]
    if not isinstance(version, int) or version > schema.FORMAT_VERSION:
        raise DataError(
            f"{path}: format_version {version!r} is newer than this deeplense_tf reads "
            f"({schema.FORMAT_VERSION}); upgrade deeplense_tf"
        )
    shape = manifest["image_shape"]
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(v, int) and v > 0 for v in shape)
    ):
        raise DataError(f"{path}: corrupt manifest (image_shape must be [H, W, C], got {shape!r})")
    if not isinstance(manifest["splits"], dict):
        raise DataError(f"{path}: corrupt manifest (splits must be an object)")
    for split, info in manifest["splits"].items():
        if not isinstance(info, dict) or "shards" not in info or "count" not in info:
            raise DataError(f"{path}: corrupt manifest (split {split!r} needs count and shards)")
    manifest.setdefault("classes", list(schema.CLASS_NAMES))
    manifest.setdefault("nuisances", [])
    manifest.setdefault("target_kinds", {})
    manifest.setdefault("exact_symmetries", ["identity"])
    manifest.setdefault("target_stats", {})
    return manifest


def split_shards(directory, manifest: dict, split: str) -> tuple[list[Path], int]:
    """(shard paths, example count) of `split`; DataError if unknown or a shard is missing."""
    directory = Path(directory)
    splits = manifest["splits"]
    if split not in splits:
        raise DataError(
            f"{directory}: no split {split!r}; the manifest has {', '.join(splits) or 'none'}"
        )
    paths = [directory / name for name in splits[split]["shards"]]
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: shard listed in the manifest is missing")
    return paths, int(splits[split]["count"])


def check_split_count(directory, split: str, expected: int, found: int) -> None:
    """DataError naming the split when its shards held `found` records, not `expected`.

    TFRecord files have no end marker, so a shard cut at a record boundary (a copy that
    stopped early, a disk that filled up) reads cleanly; only the manifest's count shows
    that records are missing.
    """
    if found != expected:
        raise DataError(
            f"{directory}: split {split!r} has {found} records in its shards but the manifest "
            f"says {expected} (a shard is truncated or comes from another run)"
        )


# --- source kinds -------------------------------------------------------------------------


def source_kind(path) -> str:
    """'simulated', 'npy', 'npz' or 'h5' for a path; DataError when none applies."""
    path = Path(path)
    if path.is_dir():
        if (path / schema.MANIFEST_NAME).is_file():
            return "simulated"
        if next(path.rglob("*.npy"), None) is not None:
            return "npy"
        raise DataError(
            f"{path}: no {schema.MANIFEST_NAME} and no .npy files (not a simulated data set "
            "or a DeepLense folder, or `deeplense simulate` has not finished)"
        )
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in (".h5", ".hdf5"):
        return "h5"
    if suffix == ".npy":
        return "npy"
    raise DataError(
        f"{path}: unsupported data file; use a simulated data directory, a folder of "
        "DeepLense .npy files, an .npz or an .h5 file"
    )


def load_examples(path, split: str = "test", limit: int | None = None) -> Examples:
    """Load a data set into memory as `Examples` (images float32 `[N, H, W, 1]`).

    `split` chooses the split of a simulated data directory, or the `train` / `val` /
    `test` subfolder of a DeepLense folder that has them; single files have no splits.
    `limit` keeps the first `limit` examples (in shard / sorted file order).
    """
    if limit is not None and limit < 1:
        raise DataError(f"{path}: limit must be at least 1, got {limit}")
    kind = source_kind(path)
    if kind == "simulated":
        return _load_simulated(Path(path), split, limit)
    if kind == "npy":
        return _load_npy_folder(Path(path), split, limit)
    if kind == "npz":
        return _load_npz(Path(path), limit)
    return _load_h5(Path(path), limit)


# --- simulated data directory -------------------------------------------------------------


def _load_simulated(directory: Path, split: str, limit: int | None) -> Examples:
    import tensorflow as tf

    manifest = read_manifest(directory)
    shards, expected = split_shards(directory, manifest, split)
    channels = manifest["image_shape"][2]
    targets, nuisances = list(manifest["targets"]), list(manifest["nuisances"])
    spec = schema.feature_spec(targets, nuisances)

    if channels != 1:
        raise DataError(f"{directory}: image_shape {manifest['image_shape']} must have one channel")
    images, class_ids = [], []
    values = {name: [] for name in targets + [schema.NUISANCE_PREFIX + n for n in nuisances]}
    remaining = limit
    for shard in shards:
        dataset = tf.data.TFRecordDataset(str(shard)).batch(256)
        dataset = dataset.map(lambda records: tf.io.parse_example(records, spec))
        position = 0  # records of this shard read so far
        try:
            for batch in dataset:
                raw = batch["image"].numpy()
                if remaining is not None:
                    raw = raw[:remaining]
                count = len(raw)
                images.append(_decode_images(raw, manifest["image_shape"], shard, position))
                class_ids.append(batch["class_id"].numpy()[:count])
                for name in targets:
                    values[name].append(batch[schema.TARGET_PREFIX + name].numpy()[:count])
                for name in nuisances:
                    key = schema.NUISANCE_PREFIX + name
                    values[key].append(batch[key].numpy()[:count])
                position += count
                if remaining is not None:
                    remaining -= count
                    if remaining <= 0:
                        break
        except tf.errors.DataLossError:
            raise DataError(
                f"{shard}: corrupt or truncated shard (unreadable at or after record {position})"
            ) from None
        except tf.errors.InvalidArgumentError as error:
            raise DataError(
                f"{shard}: records do not match the manifest's features ({_first_line(error)})"
            ) from None
        if remaining is not None and remaining <= 0:
            break
    found = sum(len(b) for b in images)
    if limit is None or found < limit or found > expected:
        # Every record was read (or more than the manifest has): the count must match.
        check_split_count(directory, split, expected, found)
    if found == 0:
        raise DataError(f"{directory}: split {split!r} has no examples")

    def join(key):
        return np.concatenate(values[key]).astype(np.float32)

    return Examples(
        images=np.concatenate(images),
        targets={name: join(name) for name in targets},
        class_id=np.concatenate(class_ids).astype(np.int64),
        nuisance={name: join(schema.NUISANCE_PREFIX + name) for name in nuisances},
        class_names=tuple(manifest["classes"]),
        source=f"{directory} ({split})",
        metadata=manifest,
    )


def _decode_images(raw, image_shape, shard, first_index: int) -> np.ndarray:
    """Raw little-endian float32 records -> `[n, H, W, 1]`, checking size and finiteness."""
    height, width, channels = image_shape
    nbytes = height * width * channels * 4
    for offset, record in enumerate(raw):
        if len(record) != nbytes:
            raise DataError(
                f"{shard}: example {first_index + offset} has {len(record) / 4:g} pixel values "
                f"but the manifest's image_shape {list(image_shape)} needs {nbytes // 4}"
            )
    images = np.frombuffer(b"".join(raw), "<f4").reshape(len(raw), height, width, channels)
    finite = np.isfinite(images).all(axis=(1, 2, 3))
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DataError(
            f"{shard}: example {first_index + bad[0]} has NaN or infinite pixels "
            f"({len(bad)} examples affected in this batch)"
        )
    return images.astype(np.float32)


def _first_line(error) -> str:
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


# --- DeepLense .npy folders ---------------------------------------------------------------


def _npy_files(directory: Path, split: str) -> tuple[Path, list[Path]]:
    if directory.is_file():
        return directory.parent, [directory]
    split_dirs = [d for d in schema.SPLITS if (directory / d).is_dir()]
    root = directory
    if split_dirs:
        if split not in split_dirs:
            raise DataError(f"{directory}: no {split!r} subfolder; it has {', '.join(split_dirs)}")
        root = directory / split
    files = sorted(root.rglob("*.npy"))
    if not files:
        raise DataError(f"{root}: no .npy files")
    return root, files


def _class_of(path: Path, root: Path) -> str | None:
    for part in path.relative_to(root).parts[:-1]:
        name = CLASS_FOLDER_ALIASES.get(re.sub(r"[\s-]+", "_", part.strip().lower()))
        if name is not None:
            return name
    return None


def parse_deeplense_array(array: np.ndarray, source: str) -> tuple[np.ndarray, float]:
    """(image [H, W] float32, axion mass in eV or NaN) from one DeepLense `.npy` array.

    The layouts of the published files: an object array `[image, m]` of shape (2,) or a
    row vector `[[image, m]]` of shape (1, 2); a plain numeric image (a class without a
    label). An image, inside an object array or alone, is `[H, W]`, `[1, H, W]`,
    `[H, W, 1]` or a flat vector of `H * W` values with `H == W`.
    """
    label = math.nan
    if array.dtype.hasobject:
        if array.shape not in ((2,), (1, 2)):
            raise DataError(
                f"{source}: expected an object array [image, label] of shape (2,) or (1, 2), "
                f"got shape {array.shape}"
            )
        image, raw_label = array.reshape(2)
        if not isinstance(image, np.ndarray) or image.dtype.kind not in "fiu" or image.ndim == 0:
            raise DataError(
                f"{source}: expected [image, label] with a numeric image array first, got "
                f"{type(image).__name__}"
            )
        label_array = np.asarray(raw_label)
        if label_array.dtype.kind not in "fiu" or label_array.size != 1:
            raise DataError(
                f"{source}: expected [image, label] with the axion mass in eV as label, got "
                f"{type(raw_label).__name__} {label_array.shape}"
            )
        label = float(label_array.reshape(()))
        if not (math.isfinite(label) and label > 0):
            raise DataError(f"{source}: label must be a positive axion mass in eV, got {label!r}")
    elif array.dtype.kind in "fiu":
        image = array
    else:
        raise DataError(f"{source}: expected [image, label], got an array of dtype {array.dtype}")
    return _as_2d_image(np.asarray(image), source).astype(np.float32), label


def _as_2d_image(image: np.ndarray, source: str) -> np.ndarray:
    if image.ndim == 3 and 1 in (image.shape[0], image.shape[-1]):
        image = image.reshape(image.shape[1:] if image.shape[0] == 1 else image.shape[:-1])
    elif image.ndim == 1:
        side = math.isqrt(image.size)
        if side * side != image.size or side == 0:
            raise DataError(
                f"{source}: a flat image must have H * W values with H == W, got {image.size}"
            )
        image = image.reshape(side, side)
    if image.ndim != 2:
        raise DataError(
            f"{source}: the image must be [H, W], [1, H, W], [H, W, 1] or a flat H * W vector, "
            f"got shape {image.shape}"
        )
    return image


def _load_npy_folder(directory: Path, split: str, limit: int | None) -> Examples:
    from tqdm import tqdm

    root, files = _npy_files(directory, split)
    if limit is not None:
        files = files[:limit]
    images, labels, classes = [], [], []
    for path in tqdm(
        files, desc="reading .npy", unit="file", file=sys.stderr, disable=len(files) < 2000
    ):
        image, label = parse_deeplense_array(load_npy(path), str(path))
        if images and image.shape != images[0].shape:
            raise DataError(
                f"{path}: image is {image.shape[0]}x{image.shape[1]} but {files[0]} is "
                f"{images[0].shape[0]}x{images[0].shape[1]}"
            )
        images.append(image)
        labels.append(label)
        classes.append(_class_of(path, root))
    stacked = np.stack(images)
    finite = np.isfinite(stacked).all(axis=(1, 2))
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise DataError(f"{files[bad]}: NaN or infinite pixels (example {bad})")
    labels = np.asarray(labels, dtype=np.float64)
    targets = {}
    if np.isfinite(labels).any():
        targets[DEEPLENSE_TARGET] = log10_axion_mass_ev(labels).astype(np.float32)
    class_id = None
    if all(c is not None for c in classes):
        class_id = np.array([schema.CLASS_NAMES.index(c) for c in classes], dtype=np.int64)
    return Examples(
        images=validate_images(stacked, source=str(directory)),
        targets=targets,
        class_id=class_id,
        source=str(directory),
        metadata={
            "targets": list(targets),
            "target_kinds": {name: {"kind": "scalar"} for name in targets},
            "exact_symmetries": list(DEEPLENSE_EXACT_SYMMETRIES),
        },
    )


# --- .npz and HDF5 ------------------------------------------------------------------------


def _as_column(values, key: str, count: int, source: str, integer: bool = False) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.dtype.kind not in ("iu" if integer else "fiu") or array.shape != (count,):
        expected = "integers" if integer else "numbers"
        raise DataError(
            f"{source}: {key!r} must be {expected} of shape [{count}] (one per image), got "
            f"dtype {array.dtype} shape {array.shape}"
        )
    return array.astype(np.int64 if integer else np.float32)


def _parse_metadata(raw, source: str) -> dict:
    if raw is None:
        return {}
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        metadata = json.loads(str(raw))
    except json.JSONDecodeError as error:
        raise DataError(f"{source}: 'metadata' is not valid JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise DataError(f"{source}: 'metadata' must be a JSON object")
    return metadata


def _assemble(source, images, targets, class_id, class_names, nuisance, metadata) -> Examples:
    images = validate_images(images, source=source)
    count = len(images)
    targets = {k: _as_column(v, k, count, source) for k, v in targets.items()}
    nuisance = {k: _as_column(v, "nuisance/" + k, count, source) for k, v in nuisance.items()}
    if class_names is None:
        class_names = tuple(metadata.get("classes", schema.CLASS_NAMES))
    else:
        class_names = tuple(
            n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(class_names).ravel()
        )
    if class_id is not None:
        class_id = _as_column(class_id, "class_id", count, source, integer=True)
        if class_id.min() < 0 or class_id.max() >= len(class_names):
            raise DataError(
                f"{source}: class_id must lie in 0..{len(class_names) - 1} "
                f"({', '.join(class_names)}), got {class_id.min()}..{class_id.max()}"
            )
    metadata = dict(metadata)
    metadata.setdefault("targets", list(targets))
    kinds = metadata.setdefault("target_kinds", {})
    for name in targets:
        kinds.setdefault(name, {"kind": "scalar"})
    metadata.setdefault("exact_symmetries", ["identity"])
    return Examples(images, targets, class_id, nuisance, class_names, source, metadata)


def _split_keys(keys, source: str):
    """Sort array names into targets and nuisances (`target/x` or bare `x`; `nuisance/x`)."""
    if "images" not in keys:
        raise DataError(
            f"{source}: no 'images' array (found {', '.join(sorted(keys)) or 'nothing'})"
        )
    targets, nuisance = {}, {}
    for key in keys:
        if key in _NPZ_RESERVED:
            continue
        if key.startswith(schema.NUISANCE_PREFIX):
            nuisance[key[len(schema.NUISANCE_PREFIX) :]] = key
        elif key.startswith(schema.TARGET_PREFIX):
            targets[key[len(schema.TARGET_PREFIX) :]] = key
        else:
            targets[key] = key
    return targets, nuisance


def _load_npz(path: Path, limit: int | None) -> Examples:
    source = str(path)
    with NpzArchive(path) as archive:
        keys = list(archive.files)
        targets, nuisance = _split_keys(keys, source)

        def read(key):
            array = archive.read(key, max_rows=limit)
            if array.ndim == 0:
                raise DataError(f"{source}: {key!r} must be an array with one entry per image")
            return array

        def text(key):
            array = archive.read(key)
            if array.dtype.kind not in "US":
                raise DataError(f"{source}: {key!r} must be text, got dtype {array.dtype}")
            return array

        metadata = _parse_metadata(text("metadata").item(), source) if "metadata" in keys else {}
        return _assemble(
            source,
            read("images"),
            {name: read(key) for name, key in targets.items()},
            read("class_id") if "class_id" in keys else None,
            text("class_names") if "class_names" in keys else None,
            {name: read(key) for name, key in nuisance.items()},
            metadata,
        )


def _load_h5(path: Path, limit: int | None) -> Examples:
    import h5py

    source = str(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"{source}: not a readable HDF5 file ({error})") from None
    with handle:
        keys = []
        handle.visititems(
            lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None
        )
        targets, nuisance = _split_keys(keys, source)
        cut = slice(None, limit)

        def read(key):
            dataset = handle[key]
            if dataset.ndim == 0:
                raise DataError(f"{source}: {key!r} must have one entry per image")
            try:
                return dataset[cut]
            except (OSError, TypeError) as error:
                raise DataError(f"{source}: cannot read {key!r} ({error})") from None

        metadata = _parse_metadata(handle.attrs.get("metadata"), source)
        return _assemble(
            source,
            read("images"),
            {name: read(key) for name, key in targets.items()},
            read("class_id") if "class_id" in keys else None,
            handle["class_names"][()] if "class_names" in keys else None,
            {name: read(key) for name, key in nuisance.items()},
            metadata,
        )


def examples_from_path_or_object(source, split: str = "test", limit: int | None = None) -> Examples:
    """`source` itself if it already is `Examples`, otherwise `load_examples(source, ...)`."""
    if isinstance(source, Examples):
        return source if limit is None else source.subset(slice(None, limit))
    return load_examples(os.fspath(source), split=split, limit=limit)

"""Feature vectors from a named intermediate layer of a Keras model.

`embedding_model(model, layer)` cuts a functional model at a layer and pools its output
to one vector per example (`deeplense_tf.models.cut`, the one copy of the cut, which
says how each output rank is handled); `extract_features` runs it over images in
batches; `save_embeddings` / `load_embeddings` store the result as `.npz` together with
every label and nuisance parameter of the data set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from deeplense_tf.errors import ConfigError, DataError

# The cut's defaults and choices (`deeplense_tf.models.cut`; a test keeps them equal). Not
# imported from there: importing `deeplense_tf.models` starts TensorFlow, and
# `deeplense cluster --help` reads these.
DEFAULT_LAYER = "embedding"
POOLINGS = ("mean", "max", "flatten")
# Beyond this a flattened feature map is mostly pixels; clustering it says little and costs
# N x D memory at every step.
MAX_FLAT_FEATURES = 16384

_TARGET_KEY = "target/"
_NUISANCE_KEY = "nuisance/"


def embedding_model(model, layer: str | None = None, pooling: str = "mean"):
    """A `keras.Model` mapping `model`'s inputs to one feature vector `[B, D]` per example.

    `layer` defaults to `"embedding"` (the encoder's pooled output in every model of
    `deeplense_tf.models`). Raises `ConfigError` for an unknown layer (listing the valid
    names) or an output that cannot be made into one vector per example.
    """
    from deeplense_tf.models.cut import cut_model

    return cut_model(model, layer, pooling, max_flat_features=MAX_FLAT_FEATURES)


def layer_names(model) -> list[str]:
    """Names usable as `layer`: top-level layers, then `outer/inner` for nested models."""
    from deeplense_tf.models.cut import layer_names as names

    return names(model)


def check_images(model, images: np.ndarray, source: str = "data") -> np.ndarray:
    """Images as float32 `[N, H, W, C]` that fit `model`'s input, or `DataError`."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise DataError(f"{source}: images have shape {images.shape}, expected [N, H, W, C]")
    if len(images) == 0:
        raise DataError(f"{source}: no images")
    expected = tuple(model.inputs[0].shape[1:])
    fits = len(expected) == 3 and all(
        e is None or e == g for e, g in zip(expected, images.shape[1:])
    )
    if not fits:
        raise DataError(
            f"{source}: images of shape {images.shape[1:]} do not fit the model, "
            f"which takes {tuple(expected)} (height, width, channels)"
        )
    return images.astype(np.float32, copy=False)


def extract_features(
    model,
    images: np.ndarray,
    *,
    layer: str | None = None,
    pooling: str = "mean",
    batch_size: int = 256,
    progress: bool = True,
    desc: str = "embedding",
    source: str = "data",
) -> np.ndarray:
    """Features `[N, D]` float32 of `images` `[N, H, W, C]` at `layer` (inference mode).

    Batches of `batch_size` keep memory flat; the result is deterministic because every
    layer runs with `training=False` (no dropout, batch-norm moving statistics).
    """
    from tqdm.auto import tqdm

    images = check_images(model, images, source)
    cut = embedding_model(model, layer, pooling)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    chunks = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
        batch = images[start : start + batch_size]
        chunks.append(np.asarray(cut(batch, training=False), dtype=np.float32))
    features = np.concatenate(chunks, axis=0)
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        raise DataError(
            f"{source}: layer {layer or DEFAULT_LAYER!r} gave non-finite features for "
            f"{int(bad.sum())} of {len(features)} images (first: index {int(np.argmax(bad))}); "
            "check the images for NaN/inf pixels"
        )
    return features


@dataclass
class Embeddings:
    """Features with the labels of the images they came from (all arrays length N)."""

    features: np.ndarray
    layer: str
    class_id: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    nuisance: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def from_examples(cls, features: np.ndarray, examples, layer: str) -> Embeddings:
        """Pair `features` with the labels of an `Examples` (data.load_examples)."""
        class_id = getattr(examples, "class_id", None)
        return cls(
            features=np.asarray(features, dtype=np.float32),
            layer=layer,
            class_id=None if class_id is None else np.asarray(class_id),
            class_names=tuple(getattr(examples, "class_names", ()) or ()),
            targets={k: np.asarray(v, float) for k, v in (examples.targets or {}).items()},
            nuisance={k: np.asarray(v, float) for k, v in (examples.nuisance or {}).items()},
            source=str(getattr(examples, "source", "")),
        )


def save_embeddings(path, embeddings: Embeddings) -> str:
    """Write `embeddings` to `path` (.npz): `features`, `layer`, `source`, `class_id`,
    `class_names`, `target/<name>`, `nuisance/<name>`. Returns the path written."""
    arrays = {
        "features": embeddings.features,
        "layer": np.array(embeddings.layer),
        "source": np.array(embeddings.source),
        "class_names": np.array(embeddings.class_names, dtype=str),
    }
    if embeddings.class_id is not None:
        arrays["class_id"] = embeddings.class_id
    arrays.update({_TARGET_KEY + k: v for k, v in embeddings.targets.items()})
    arrays.update({_NUISANCE_KEY + k: v for k, v in embeddings.nuisance.items()})
    path = str(path)
    np.savez_compressed(path, **arrays)
    return path if path.endswith(".npz") else path + ".npz"


def load_embeddings(path) -> Embeddings:
    """Read a file written by `save_embeddings`; DataError naming the file otherwise.

    Read through `deeplense_tf.data.safe_npy.NpzArchive`, not `np.load`: each member's
    header is checked against the bytes the archive really holds before anything is
    allocated, so a crafted header cannot claim a huge array, and nothing is unpickled.
    """
    from deeplense_tf.data.safe_npy import NpzArchive

    def text(archive, key) -> str:
        return str(archive.read(key)) if key in archive.files else ""

    try:
        opened = NpzArchive(path)
    except DataError as err:
        raise DataError(f"{path}: not a readable embeddings .npz ({err})") from None
    with opened as archive:
        if "features" not in archive.files:
            raise DataError(f"{path}: no 'features' array; not written by save_embeddings")
        features = archive.read("features")
        if features.ndim != 2 or features.dtype.kind != "f":
            raise DataError(
                f"{path}: 'features' must be a float [N, D] array, got {features.dtype} "
                f"{list(features.shape)}"
            )
        n = len(features)

        def per_example(key):
            values = archive.read(key)
            if values.shape[:1] != (n,):
                raise DataError(
                    f"{path}: {key!r} has shape {list(values.shape)}, not one value for each "
                    f"of the {n} feature rows"
                )
            return values

        return Embeddings(
            features=features,
            layer=text(archive, "layer"),
            class_id=per_example("class_id") if "class_id" in archive.files else None,
            class_names=tuple(str(c) for c in archive.read("class_names").reshape(-1))
            if "class_names" in archive.files
            else (),
            targets={
                k[len(_TARGET_KEY) :]: per_example(k)
                for k in archive.files
                if k.startswith(_TARGET_KEY)
            },
            nuisance={
                k[len(_NUISANCE_KEY) :]: per_example(k)
                for k in archive.files
                if k.startswith(_NUISANCE_KEY)
            },
            source=text(archive, "source"),
        )

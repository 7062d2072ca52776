"""Reference feature sets, so the scores of trained features can be read against them.

- Raw pixels after PCA: what the images carry before any network looks at them.
- The same architecture with random weights: what the architecture alone (convolutions,
  pooling, the preprocessing layer) gives without training. The difference between this
  and the trained features is what training added.
"""

from __future__ import annotations

import numpy as np

from deeplense_tf.errors import ConfigError

RAW_PCA_COMPONENTS = 50


def raw_pixel_features(images: np.ndarray, n_components: int = RAW_PCA_COMPONENTS,
                       seed: int = 0) -> np.ndarray:
    """First `n_components` principal components `[N, d]` of the flattened images.

    Pixels are centred but not scaled per pixel: they share one unit, and scaling would
    blow up the near-constant empty-sky pixels into the leading components.
    """
    from sklearn.decomposition import PCA

    flat = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    d = max(1, min(int(n_components), flat.shape[0], flat.shape[1]))
    return PCA(n_components=d, random_state=seed).fit_transform(flat).astype(np.float32)


def random_weight_model(model, *, config: dict | None = None, targets=None, seed: int = 0):
    """A model with `model`'s architecture and freshly initialised weights (seeded).

    With a run's resolved `config` (its `model:` section) and `targets`, the model is
    rebuilt by `deeplense_tf.models.build_model`, exactly as training built it before the
    first step. Without them (any other Keras model) it is `keras.models.clone_model`,
    which re-creates every layer from its config with new initial weights. Both seed the
    global Keras random state with `seed`.
    """
    import keras

    keras.utils.set_random_seed(int(seed))
    section = (config or {}).get("model") if isinstance(config, dict) else None
    if section and targets:
        from deeplense_tf.models import build_model

        try:
            rebuilt = build_model(
                section["name"],
                tuple(model.inputs[0].shape[1:]),
                list(targets),
                head=section.get("head", "gaussian"),
                normalization=section.get("normalization", "peak_asinh"),
                crop=section.get("crop"),
                **(section.get("options") or {}),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(
                f"cannot rebuild model {section.get('name')!r} from the run config for the "
                f"random-weight baseline: {err}"
            ) from err
        if _weight_shapes(rebuilt) != _weight_shapes(model):
            raise ConfigError(
                f"the run config's model {section['name']!r} rebuilds with other weight shapes "
                "than model.keras; the random-weight baseline would not be the same architecture"
            )
        return rebuilt
    return keras.models.clone_model(model)


def _weight_shapes(model) -> list[tuple]:
    return [tuple(w.shape) for w in model.weights]

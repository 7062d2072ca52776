"""A finished run folder, as everything after training reads it (docs/architecture.md).

    run = Run.load("runs/resnet")
    preds = run.predict(images)                # {target: {"mean": [N], "std": [N] | None}}
    features = run.embedding_model().predict(images)

`Run.load` checks the folder and raises `RunError` naming what is missing, incomplete
or from another format version. Predictions are in physical units (the model works in
standardised units; `target_stats.json` converts back).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deeplense_tf.errors import DataError, RunError

FORMAT_VERSION = 1

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
TARGET_STATS_FILE = "target_stats.json"
MANIFEST_FILE = "data_manifest.json"
RUN_FILE = "run.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
BACKUP_DIR = "backup"
REQUIRED_FILES = (MODEL_FILE, CONFIG_FILE, TARGET_STATS_FILE, RUN_FILE)


def read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(Path(path).read_text())
    except OSError as err:
        raise RunError(f"{path}: cannot read the {what} ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"{path}: the {what} is corrupt ({err})") from None
    if not isinstance(value, dict):
        raise RunError(f"{path}: the {what} is corrupt (expected a JSON object)")
    return value


def check_run_info(info: dict, path: Path) -> None:
    """RunError unless run.json is from this format version and marks a finished run."""
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        made_by = info.get("deeplense_tf", "an unknown version")
        raise RunError(
            f"{path}: run format_version {version!r} (written by deeplense_tf {made_by}); this "
            f"deeplense_tf reads format_version {FORMAT_VERSION}: retrain, or use the version "
            "that wrote it"
        )
    if not info.get("complete"):
        raise RunError(
            f"{path.parent}: incomplete run (training did not finish); re-run the same "
            "`deeplense train` command to resume it"
        )


@dataclass
class Run:
    """A trained model with everything needed to use it.

    Attributes:
        path: the run folder (None for a run held only in memory, as on a non-chief
            worker of a multi-worker job).
        model: the Keras model (raw pixels in, standardised outputs out).
        config: the resolved experiment config.
        targets: target names, in output order.
        head: "gaussian" or "point".
        input_shape: `(H, W, C)` of the raw images.
        target_stats: `{target: {"mean", "std"}}` in physical units.
        info: the contents of run.json.
        manifest: the training data's manifest (None if the folder has no copy).
    """

    path: Path | None
    model: object
    config: dict
    targets: list
    head: str
    input_shape: tuple
    target_stats: dict
    info: dict = field(default_factory=dict)
    manifest: dict | None = None

    @classmethod
    def load(cls, path) -> Run:
        """Open a finished run folder; RunError naming what is missing or incompatible."""
        path = Path(path)
        if not path.is_dir():
            raise RunError(f"{path}: no such run folder")
        info_path = path / RUN_FILE
        if not info_path.is_file():
            if (path / BACKUP_DIR).is_dir():
                raise RunError(
                    f"{path}: incomplete run (training did not finish); re-run the same "
                    "`deeplense train` command to resume it"
                )
            raise RunError(f"{path}: not a run folder (no {RUN_FILE})")
        info = read_json(info_path, "run description")
        check_run_info(info, info_path)
        missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
        if missing:
            raise RunError(f"{path}: run folder is missing {', '.join(missing)}")

        from deeplense_tf.training.config import read_yaml

        try:
            config = read_yaml(path / CONFIG_FILE)
        except Exception as err:  # ConfigError -> RunError: the folder is what is wrong
            raise RunError(f"{path / CONFIG_FILE}: {err}") from None
        stats = read_json(path / TARGET_STATS_FILE, "target statistics")
        targets = list(info.get("targets") or [])
        if not targets:
            raise RunError(f"{info_path}: lists no targets")
        missing_stats = [t for t in targets if t not in stats]
        if missing_stats:
            raise RunError(f"{path / TARGET_STATS_FILE}: no statistics for {', '.join(missing_stats)}")
        manifest = None
        if (path / MANIFEST_FILE).is_file():
            manifest = read_json(path / MANIFEST_FILE, "data manifest copy")

        import keras

        import deeplense_tf.models  # noqa: F401  (registers the custom layers)
        import deeplense_tf.training.ensemble  # noqa: F401  (registers the ensemble's mixture layer)

        try:
            model = keras.saving.load_model(path / MODEL_FILE, compile=False)
        except Exception as err:
            raise RunError(f"{path / MODEL_FILE}: cannot load the model ({err})") from None
        outputs = list(model.output_names)
        if sorted(outputs) != sorted(targets):
            raise RunError(
                f"{path}: model outputs {outputs} do not match the targets {targets} in {RUN_FILE}"
            )
        return cls(
            path=path,
            model=model,
            config=config,
            targets=targets,
            head=info.get("head", "gaussian"),
            input_shape=tuple(info.get("input_shape") or model.input_shape[1:]),
            target_stats={t: {"mean": float(stats[t]["mean"]), "std": float(stats[t]["std"])} for t in targets},
            info=info,
            manifest=manifest,
        )

    # --- inference ----------------------------------------------------------------------

    @property
    def target_kinds(self) -> dict:
        """`{target: {"kind": ...}}` from the training manifest (scalar when unknown)."""
        kinds = (self.manifest or {}).get("target_kinds") or {}
        return {t: kinds.get(t, {"kind": "scalar"}) for t in self.targets}

    def _check_images(self, images) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3 and self.input_shape[-1] == 1:
            images = images[..., np.newaxis]  # [N, H, W] -> [N, H, W, 1]
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(self.input_shape):
            raise DataError(
                f"images of shape {list(images.shape)} do not fit this run's model, which takes "
                f"[N, {', '.join(str(d) for d in self.input_shape)}]"
                + (f" ({self.path})" if self.path else "")
            )
        bad = ~np.isfinite(images).all(axis=(1, 2, 3))
        if bad.any():
            raise DataError(
                f"{int(bad.sum())} image(s) contain NaN or infinite pixels (first: index "
                f"{int(np.flatnonzero(bad)[0])})"
            )
        return images

    def _forward(self):
        if getattr(self, "_forward_fn", None) is None:
            import tensorflow as tf

            model = self.model
            spec = tf.TensorSpec([None, *self.input_shape], tf.float32)
            self._forward_fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        return self._forward_fn

    def predict_standardised(self, images, batch_size: int = 256) -> dict:
        """Raw model outputs `{target: [N, 1 or 2]}` (standardised units), batched."""
        images = self._check_images(images)
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        forward = self._forward()
        chunks = {t: [] for t in self.targets}
        for start in range(0, len(images), batch_size):
            out = forward(images[start : start + batch_size])
            for t in self.targets:
                chunks[t].append(np.asarray(out[t], dtype=np.float32))
        width = 2 if self.head == "gaussian" else 1
        return {
            t: np.concatenate(c) if c else np.zeros((0, width), np.float32) for t, c in chunks.items()
        }

    def _to_physical(self, raw: dict) -> dict:
        out = {}
        for t in self.targets:
            mean, std = self.target_stats[t]["mean"], self.target_stats[t]["std"]
            values = raw[t].astype(np.float64)
            pred_mean = values[:, 0] * std + mean
            pred_std = np.exp(0.5 * values[:, 1]) * std if self.head == "gaussian" else None
            out[t] = {"mean": pred_mean, "std": pred_std}
        return out

    def predict(self, images, batch_size: int = 256, tta: bool = False) -> dict:
        """Predictions in physical units.

        Args:
            images: raw pixels `[N, H, W, C]` (or `[N, H, W]` for one channel), the
                run's input shape.
            batch_size: images per forward pass.
            tta: test-time augmentation over the eight D4 elements. Each transformed
                image is predicted, vector / spin-2 targets are mapped back to the
                original frame, and the eight predictions are treated as an
                equal-weight mixture: the mean is their average and, for the Gaussian
                head, the variance is the mixture's total variance (mean of the eight
                variances plus the variance of the eight means), so disagreement
                between views widens the interval rather than being ignored.

        Returns:
            `{target: {"mean": float64 [N], "std": float64 [N] or None (point head)}}`.
        """
        images = self._check_images(images)
        if not tta:
            return self._to_physical(self.predict_standardised(images, batch_size))

        from deeplense_tf.data import augment

        height, width = images.shape[1:3]
        if height != width:
            raise DataError(
                f"test-time augmentation rotates by 90 degrees and needs square images, got {height}x{width}"
            )
        kinds = (self.manifest or {}).get("target_kinds") or {}
        means, variances = [], []
        for name in augment.D4_ELEMENTS:
            view = self._to_physical(
                self.predict_standardised(augment.transform_image(images, name), batch_size)
            )
            means.append(_back_to_original_frame(view, "mean", name, kinds, self.targets))
            if self.head == "gaussian":
                # A D4 map permutes components and flips their signs, so the stds follow
                # the same permutation (their signs are dropped by squaring).
                stds = _back_to_original_frame(view, "std", name, kinds, self.targets)
                variances.append({t: np.square(stds[t]) for t in self.targets})
        out = {}
        for t in self.targets:
            stacked = np.stack([m[t] for m in means])  # [8, N]; NaN where a view cannot be mapped back
            mean = np.nanmean(stacked, axis=0)
            std = None
            if self.head == "gaussian":
                aleatoric = np.nanmean(np.stack([v[t] for v in variances]), axis=0)
                std = np.sqrt(aleatoric + np.nanvar(stacked, axis=0))
            out[t] = {"mean": mean, "std": std}
        return out

    def embedding_model(self, layer: str | None = None):
        """A `keras.Model` from the `image` input to the output of `layer` (default `embedding`).

        Shares the run's layers and weights. RunError naming the available layers when
        `layer` does not exist.
        """
        import keras

        name = layer or "embedding"
        try:
            chosen = self.model.get_layer(name)
        except ValueError:
            names = [lay.name for lay in self.model.layers]
            raise RunError(
                f"model of {self.path or 'this run'} has no layer named {name!r}; layers: "
                f"{', '.join(names)}"
            ) from None
        return keras.Model(self.model.inputs, chosen.output, name=f"{self.model.name}_{name}")


def _back_to_original_frame(view: dict, key: str, element: str, kinds: dict, targets) -> dict:
    """Predictions made on an image transformed by `element`, mapped back to the original frame.

    Vector / spin-2 components need their partner; a partner the run does not predict
    is NaN, so a component that the element mixes with its partner comes back NaN and
    that view is left out of the average (`predict` uses nan-aware means).
    """
    from deeplense_tf.data import augment

    values = {t: view[t][key] for t in targets}
    used_kinds = {}
    for t in targets:
        info = kinds.get(t) or {"kind": "scalar"}
        if info.get("kind", "scalar") == "scalar":
            continue
        partner = info.get("partner")
        used_kinds[t] = info
        if partner in kinds:
            used_kinds[partner] = kinds[partner]
        if partner not in values:
            values[partner] = np.full_like(values[t], np.nan)
    mapped = augment.inverse_transform_targets(values, element, used_kinds)
    return {t: mapped[t] for t in targets}

"""A finished run folder, as everything after training reads it (docs/architecture.md).

    run = Run.load("runs/resnet")
    preds = run.predict(images)                # {target: {"mean": [N], "std": [N] | None}}
    features = run.embedding_model().predict(images)
    run.paths.history, run.calibration         # RUN/history.csv, the variance calibration record

`Run.load` checks the folder and raises `RunError` naming what is missing, incomplete
or from another format version. Predictions are in physical units (the model works in
standardised units; `target_stats.json` converts back). Loading needs only `models/`
(the architectures' layers and the ensemble's mixture layer), never `training/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deeplense_tf.errors import ConfigError, DataError, RunError
from deeplense_tf.files import read_yaml
from deeplense_tf.runs.layout import (
    BACKUP_DIR,
    CONFIG_FILE,
    ENCODER_HEAD,
    MANIFEST_FILE,
    MODEL_FILE,
    REQUIRED_FILES,
    RUN_FILE,
    TARGET_STATS_FILE,
    RunPaths,
    check_run_info,
    read_json,
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
        head: "gaussian", "student_t" or "point".
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

        try:
            config = read_yaml(path / CONFIG_FILE)
        except ConfigError as err:  # -> RunError: the folder is what is wrong
            raise RunError(f"{path / CONFIG_FILE}: {err}") from None
        stats = read_json(path / TARGET_STATS_FILE, "target statistics")
        targets = list(info.get("targets") or [])
        encoder_only = info.get("head") == ENCODER_HEAD  # `deeplense pretrain`: no targets
        if not targets and not encoder_only:
            raise RunError(f"{info_path}: lists no targets")
        missing_stats = [t for t in targets if t not in stats]
        if missing_stats:
            raise RunError(f"{path / TARGET_STATS_FILE}: no statistics for {', '.join(missing_stats)}")
        manifest = None
        if (path / MANIFEST_FILE).is_file():
            manifest = read_json(path / MANIFEST_FILE, "data manifest copy")

        import keras

        import deeplense_tf.models  # noqa: F401  (registers the custom layers)
        import deeplense_tf.models.ensemble  # noqa: F401  (registers the ensemble's mixture layer)

        try:
            model = keras.saving.load_model(path / MODEL_FILE, compile=False)
        except Exception as err:
            raise RunError(f"{path / MODEL_FILE}: cannot load the model ({err})") from None
        from deeplense_tf.models.covariance import JOINT_OUTPUT

        # The full-covariance head's joint output sits beside the per-target ones.
        outputs = [name for name in model.output_names if name != JOINT_OUTPUT]
        if encoder_only:
            from deeplense_tf.models.cut import EMBEDDING_LAYER

            if EMBEDDING_LAYER not in [layer.name for layer in model.layers]:
                raise RunError(f"{path / MODEL_FILE}: a pretrained encoder without an "
                               f"{EMBEDDING_LAYER!r} layer")
        elif sorted(outputs) != sorted(targets):
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

    # --- the folder -----------------------------------------------------------------------

    @property
    def paths(self) -> RunPaths:
        """The folder's parts (`paths.model`, `paths.metrics`, `paths.eval` ...); RunError
        for a run held only in memory."""
        if self.path is None:
            raise RunError("this run is held in memory only (a non-chief worker's); it has no folder")
        return RunPaths(self.path)

    @property
    def metrics(self) -> dict:
        """RUN/metrics.json (training's summary), or {} when the folder has none."""
        if self.path is None or not self.paths.metrics.is_file():
            return {}
        return read_json(self.paths.metrics, "training metrics")

    @property
    def calibration(self) -> dict | None:
        """The variance calibration record (`metrics.json["variance_calibration"]`:
        `{"split", "targets": {target: fit}}`, plus `data` after `deeplense calibrate`),
        or None for a run whose stds were never calibrated."""
        return self.metrics.get("variance_calibration")

    def data_path(self, data=None) -> str:
        """`data` if given, else the run's training data folder (config `data.path`).

        DataError naming config.yaml when the run names no data or its data is gone.
        """
        if data is not None:
            return str(data)
        where = Path(self.path or ".") / CONFIG_FILE
        path = ((self.config or {}).get("data") or {}).get("path")
        if not path:
            raise DataError(f"{where}: no data.path to evaluate on; pass --data PATH")
        if not Path(path).exists():
            raise DataError(f"{where}: the run's training data {path} does not exist (any more); pass --data PATH")
        return str(path)

    def check_examples(self, examples) -> None:
        """DataError naming the data set when its images or targets do not fit the run."""
        check_examples_fit(self, examples)

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
        if self.head == ENCODER_HEAD:
            raise encoder_has_no_targets(self)
        images = self._check_images(images)
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        forward = self._forward()
        chunks = {t: [] for t in self.targets}
        for start in range(0, len(images), batch_size):
            out = forward(images[start : start + batch_size])
            for t in self.targets:
                chunks[t].append(np.asarray(out[t], dtype=np.float32))
        width = {"gaussian": 2, "student_t": 3, "full_covariance": 2}.get(self.head, 1)
        return {
            t: np.concatenate(c) if c else np.zeros((0, width), np.float32) for t, c in chunks.items()
        }

    def _to_physical(self, raw: dict) -> dict:
        out = {}
        for t in self.targets:
            mean, std = self.target_stats[t]["mean"], self.target_stats[t]["std"]
            values = raw[t].astype(np.float64)
            pred_mean = values[:, 0] * std + mean
            pred_std = np.exp(0.5 * values[:, 1]) * std if self.head != "point" else None
            out[t] = {"mean": pred_mean, "std": pred_std}
            if values.shape[1] >= 3:  # Student-t head: degrees of freedom (unitless)
                out[t]["df"] = values[:, 2]
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
                equal-weight mixture: the mean is their average and, for a
                probabilistic head, the variance is the mixture's total variance (mean of
                the eight variances plus the variance of the eight means), so
                disagreement between views widens the interval rather than being ignored.
                The mixture itself is returned as `components` (what coverage and
                calibration score: `deeplense_tf.predictive.Predictive.from_prediction`).

        Returns:
            `{target: {"mean": float64 [N], "std": float64 [N] or None (point head)}}`,
            plus `"df"` [N] for the Student-t head, and with `tta` for a probabilistic
            head `"components": {"mean", "std"[, "df"]}`, each `[8, N]` (NaN where a
            view cannot be mapped back). An ensemble of probabilistic members gives its
            members' mixture as `components` (`[M, N]`, `[8 M, N]` with `tta`, and
            `"group_size"`: M).
        """
        images = self._check_images(images)
        if self.head == "softmax":
            return self._predict_classes(images, batch_size, tta)
        if not tta:
            return self._with_member_components(
                self._to_physical(self.predict_standardised(images, batch_size)), images, batch_size, False)

        from deeplense_tf.data import augment

        height, width = images.shape[1:3]
        if height != width:
            raise DataError(
                f"test-time augmentation rotates by 90 degrees and needs square images, got {height}x{width}"
            )
        kinds = (self.manifest or {}).get("target_kinds") or {}
        means, variances, dfs = [], [], []
        for name in augment.D4_ELEMENTS:
            view = self._to_physical(
                self.predict_standardised(augment.transform_image(images, name), batch_size)
            )
            means.append(_back_to_original_frame(view, "mean", name, kinds, self.targets))
            if self.head != "point":
                # A D4 map permutes components and flips their signs, so the stds follow
                # the same permutation (their signs are dropped by squaring).
                stds = _back_to_original_frame(view, "std", name, kinds, self.targets)
                variances.append({t: np.square(stds[t]) for t in self.targets})
            if self.head == "student_t":
                df = _back_to_original_frame(view, "df", name, kinds, self.targets)
                dfs.append({t: np.abs(df[t]) for t in self.targets})
        out = {}
        for t in self.targets:
            stacked = np.stack([m[t] for m in means])  # [8, N]; NaN where a view cannot be mapped back
            mean = np.nanmean(stacked, axis=0)
            std = None
            out[t] = {"mean": mean, "std": std}
            if self.head != "point":
                component_var = np.stack([v[t] for v in variances])
                out[t]["std"] = np.sqrt(np.nanmean(component_var, axis=0) + np.nanvar(stacked, axis=0))
                out[t]["components"] = {"mean": stacked, "std": np.sqrt(component_var)}
            if self.head == "student_t":
                out[t]["components"]["df"] = np.stack([d[t] for d in dfs])
        return self._with_member_components(out, images, batch_size, True)

    def _with_member_components(self, out: dict, images, batch_size: int, tta: bool) -> dict:
        """`out` with an ensemble's members' mixture as each target's `components`
        (`deeplense_tf.models.ensemble.mixture_components`: `[M, N]`, under TTA `[8 M, N]`
        in groups of M per view), the distribution its coverage and calibration score; the
        moments in `out` stay the model's. Other runs: `out` as it is."""
        from deeplense_tf.models.ensemble import members_forward, mixture_components

        if not self.info.get("members"):
            return out
        if getattr(self, "_members_fn", None) is None:
            self._members_fn = members_forward(self.model)
        if self._members_fn is None:
            return out
        from deeplense_tf.data import augment

        kinds = (self.manifest or {}).get("target_kinds") or {}
        views = []
        for name in augment.D4_ELEMENTS if tta else ("identity",):
            x = augment.transform_image(images, name) if tta else images
            chunks = [self._members_fn(x[start : start + batch_size]) for start in range(0, len(x), batch_size)]
            raw = [{t: np.concatenate([c[i][t] for c in chunks]) for t in self.targets}
                   for i in range(len(chunks[0]))] if chunks else []
            components = mixture_components(self.model, raw, self.targets) if raw else {}
            if sorted(components) != sorted(self.targets):
                return out  # a point member: no mixture of distributions
            if tta:  # back to the original frame, as the views' moments above
                for key in [k for k in ("mean", "std", "df") if k in components[self.targets[0]]]:
                    mapped = _back_to_original_frame(components, key, name, kinds, self.targets)
                    for t in self.targets:
                        components[t][key] = mapped[t] if key == "mean" else np.abs(mapped[t])
            views.append(components)
        for t in self.targets:
            out[t]["components"] = {key: np.concatenate([v[t][key] for v in views])
                                    for key in ("mean", "std", "df") if key in views[0][t]}
            out[t]["components"]["group_size"] = views[0][t]["group_size"]
        return out

    @property
    def class_names(self) -> tuple[str, ...]:
        """A classifier's classes in output order (run.json's `classes`); () for a regressor."""
        return tuple(self.info.get("classes") or ())

    def _predict_classes(self, images, batch_size: int, tta: bool) -> dict:
        """The softmax head's `predict`: `{CLASS_TARGET: {"probabilities": float64 [N, K],
        "class_id": int64 [N] (the most probable class), "class_names": (K names)}}`.

        With `tta` the probabilities are the average over the eight D4 views (the class of
        a lens does not change when it is rotated or mirrored).
        """
        from deeplense_tf.data import augment
        from deeplense_tf.data.schema import CLASS_TARGET

        views = augment.D4_ELEMENTS if tta else ("identity",)
        if tta and images.shape[1] != images.shape[2]:
            raise DataError(
                f"test-time augmentation rotates by 90 degrees and needs square images, got "
                f"{images.shape[1]}x{images.shape[2]}"
            )
        probabilities = np.mean([
            self.predict_standardised(
                augment.transform_image(images, name) if name != "identity" else images, batch_size
            )[CLASS_TARGET].astype(np.float64)
            for name in views
        ], axis=0)
        return {CLASS_TARGET: {"probabilities": probabilities,
                               "class_id": np.argmax(probabilities, axis=1).astype(np.int64),
                               "class_names": self.class_names}}

    def predict_joint(self, images, batch_size: int = 256, tta: bool = False):
        """The full-covariance head's joint prediction, physical units
        (`deeplense_tf.models.covariance.JointGaussian`: `mean` [N, T], `covariance`
        [N, T, T] in `targets` order). With `tta`: `(moment-matched JointGaussian, the eight
        views' JointGaussians mapped back to the original frame)`. RunError for other heads."""
        from deeplense_tf.models import covariance

        if self.head != covariance.HEAD:
            raise RunError(f"{self.path or 'this run'}: has a {self.head} head; only full_covariance "
                           "predicts a joint covariance")
        images = self._check_images(images)
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        return covariance.predict_joint(
            self._forward(), images, self.targets, self.target_stats, batch_size=batch_size, tta=tta,
            target_kinds=(self.manifest or {}).get("target_kinds") or {},
        )

    def embedding_model(self, layer: str | None = None):
        """A `keras.Model` from the `image` input to the output of `layer` (default
        `embedding`), as it is (no pooling; `deeplense_tf.models.cut`).

        Shares the run's layers and weights. RunError naming the available layers when
        `layer` does not exist.
        """
        from deeplense_tf.models.cut import cut_model

        try:
            return cut_model(self.model, layer)
        except ConfigError as err:
            raise RunError(f"{self.path or 'this run'}: {err}") from None


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


def encoder_has_no_targets(run) -> RunError:
    """The error for predicting or evaluating with a pretrained encoder (no targets)."""
    return RunError(
        f"{getattr(run, 'path', None) or 'this run'}: is a self-supervised encoder (deeplense "
        "pretrain) and predicts no targets; cluster its features (deeplense cluster) or "
        "fine-tune it (deeplense train --init-from RUN)"
    )


def check_examples_fit(run, examples) -> None:
    """DataError naming the data set when its images or targets do not fit `run`
    (RunError for a pretrained encoder, which has no targets).

    `run` needs `input_shape` and `targets` (a `Run`, or anything shaped like one);
    `examples` is a `deeplense_tf.data.Examples`.
    """
    if getattr(run, "head", None) == ENCODER_HEAD:
        raise encoder_has_no_targets(run)
    images = examples.images
    expected = tuple(int(d) for d in run.input_shape)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise DataError(
            f"{examples.source}: images have shape {tuple(images.shape[1:])} (per image) but the run "
            f"expects {expected} (H, W, channels); evaluate on data made with the run's preset"
        )
    available = sorted(examples.targets)
    if not available:
        raise DataError(
            f"{examples.source}: the data set holds no target values, so there is nothing to compare "
            f"with; use `deeplense predict` for unlabelled images"
        )
    missing = [t for t in run.targets if t not in examples.targets]
    if missing:
        raise DataError(
            f"{examples.source}: no target {', '.join(missing)} (the data set has "
            f"{', '.join(available)}; the run predicts {', '.join(run.targets)})"
        )

"""What every exported artefact agrees on: input shape, output names and units.

A trained model outputs, per target, `[B, 2]` (mean, log-variance) for the Gaussian
head, `[B, 3]` (mean, log-variance, df) for the Student-t head or `[B, 1]` for the point
head, in *standardised* units. Every export (SavedModel signatures, TFLite files, the
on-device training model) returns physical units instead:

    <target>      = output[:, 0] * std + mean                  (physical units, [B])
    <target>_std  = exp(0.5 * output[:, 1]) * std               (Gaussian and Student-t, [B])
    <target>_df   = output[:, 2]                                (Student-t only, [B], unitless)

with `mean`/`std` from the run's `target_stats.json`. A classifier (softmax head) has
one output instead, `class_probabilities` `[B, K]` (the model's own, temperature
included), whose columns are `class_names` (run.json's `classes`, also in export.json).
`physical_outputs` is that map in TensorFlow (inside exported graphs) and
`physical_outputs_np` the same in NumPy (float64) for the Keras reference every export is
compared with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from deeplense_tf.errors import ExportError

INPUT_NAME = "image"
EMBEDDING_LAYER = "embedding"
STD_SUFFIX = "_std"
DF_SUFFIX = "_df"
PROBABILITIES_OUTPUT = "class_probabilities"


@dataclass(frozen=True)
class ExportSpec:
    """The run facts an export needs besides the Keras model.

    Attributes:
        model_name: architecture name (`run.json`'s "model"), for messages and reports.
        targets: target names, in the model's output order.
        head: "gaussian", "student_t" or "point".
        input_shape: raw image shape `(H, W, C)` in pixels.
        target_stats: `{target: {"mean", "std"}}` in physical units (the standardisation
            used in training).
        class_names: a classifier's classes, in the order of its probability columns.
    """

    model_name: str
    targets: tuple[str, ...]
    head: str
    input_shape: tuple[int, int, int]
    target_stats: Mapping[str, Mapping[str, float]]
    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        if self.head == "projector":  # runs.layout.ENCODER_HEAD: a `deeplense pretrain` run
            raise ExportError(
                f"model {self.model_name!r}: a pretrained encoder (projector head) predicts no "
                "target; fine-tune it (deeplense train --init-from RUN) and export that run"
            )
        if self.head not in ("gaussian", "student_t", "point", "softmax", "full_covariance"):
            raise ExportError(f"model {self.model_name!r}: unknown head {self.head!r}")
        if self.head == "softmax" and len(self.class_names) < 2:
            raise ExportError(
                f"model {self.model_name!r}: a classifier needs its class names (run.json's "
                f"classes), got {list(self.class_names)}"
            )
        if len(self.input_shape) != 3:
            raise ExportError(
                f"model {self.model_name!r}: input shape must be (H, W, C), got {self.input_shape}"
            )
        missing = [t for t in self.targets if t not in self.target_stats]
        if missing:
            raise ExportError(
                f"model {self.model_name!r}: target_stats has no mean/std for {', '.join(missing)}"
            )
        names = self.output_names
        if len(set(names)) != len(names) or INPUT_NAME in names:
            raise ExportError(
                f"model {self.model_name!r}: targets {list(self.targets)} give clashing output "
                f"names {names} (a target may not be named '<other target>{STD_SUFFIX}' or "
                f"'{INPUT_NAME}')"
            )

    @classmethod
    def from_run(cls, run) -> ExportSpec:
        """From a loaded `deeplense_tf.runs.Run`."""
        return cls(
            model_name=str((getattr(run, "info", None) or {}).get("model") or run.model.name),
            targets=tuple(run.targets),
            head=str(run.head),
            input_shape=tuple(int(d) for d in run.input_shape),
            target_stats={
                t: {"mean": float(s["mean"]), "std": float(s["std"])}
                for t, s in run.target_stats.items()
            },
            class_names=tuple(getattr(run, "class_names", ()) or ()),
        )

    @property
    def output_names(self) -> list[str]:
        """Names of the physical outputs: `<target>`, for a probabilistic head `<target>_std`,
        for the Student-t head `<target>_df`; a classifier's `class_probabilities`."""
        if self.head == "softmax":
            return [PROBABILITIES_OUTPUT]
        names = []
        for target in self.targets:
            names.append(target)
            if self.head != "point":
                names.append(target + STD_SUFFIX)
            if self.head == "student_t":
                names.append(target + DF_SUFFIX)
        if self.head == "full_covariance":  # [B, T, T] each, rows and columns in target order
            from deeplense_tf.models.covariance import CORRELATION_OUTPUT, COVARIANCE_OUTPUT

            names += [COVARIANCE_OUTPUT, CORRELATION_OUTPUT]
        return names

    def image_spec(self, batch: int | None = None):
        """`tf.TensorSpec` of the raw-pixel input `[batch, H, W, C]` float32 named `image`."""
        import tensorflow as tf

        return tf.TensorSpec([batch, *self.input_shape], tf.float32, name=INPUT_NAME)

    def target_std(self) -> list[float]:
        """The targets' train-split stds, in target order (physical units per standard unit)."""
        return [self._stats(t)[1] for t in self.targets]

    def _stats(self, target):
        stats = self.target_stats[target]
        return float(stats["mean"]), float(stats["std"])


def model_input(model):
    """The model's input tensor(s) in the structure its call expects (one tensor, not `[x]`)."""
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def physical_outputs(raw: Mapping, spec: ExportSpec) -> dict:
    """Model outputs (standardised, `{target: [B, k]}`) -> `{name: [B]}` physical, in TF."""
    import tensorflow as tf

    if spec.head == "softmax":
        return {PROBABILITIES_OUTPUT: tf.cast(raw[spec.targets[0]], tf.float32)}
    result = {}
    for target in spec.targets:
        mean, std = spec._stats(target)
        values = tf.cast(raw[target], tf.float32)
        result[target] = values[:, 0] * std + mean
        if spec.head != "point":
            result[target + STD_SUFFIX] = tf.exp(0.5 * values[:, 1]) * std
        if spec.head == "student_t":
            result[target + DF_SUFFIX] = values[:, 2]
    if spec.head == "full_covariance":
        from deeplense_tf.models.covariance import JOINT_OUTPUT, physical_joint_outputs

        result.update(physical_joint_outputs(raw[JOINT_OUTPUT], spec.target_std()))
    return result


def physical_outputs_np(raw: Mapping, spec: ExportSpec) -> dict[str, np.ndarray]:
    """NumPy twin of `physical_outputs` (computed in float64)."""
    if spec.head == "softmax":
        return {PROBABILITIES_OUTPUT: np.asarray(raw[spec.targets[0]], np.float64)}
    result = {}
    for target in spec.targets:
        mean, std = spec._stats(target)
        values = np.asarray(raw[target], np.float64)
        result[target] = values[:, 0] * std + mean
        if spec.head != "point":
            result[target + STD_SUFFIX] = np.exp(0.5 * values[:, 1]) * std
        if spec.head == "student_t":
            result[target + DF_SUFFIX] = values[:, 2]
    if spec.head == "full_covariance":
        from deeplense_tf.models.covariance import JOINT_OUTPUT, physical_joint_outputs_np

        result.update(physical_joint_outputs_np(raw[JOINT_OUTPUT], spec.target_std()))
    return result


def keras_reference(model, spec: ExportSpec, images: np.ndarray, batch_size: int = 64) -> dict:
    """The Keras model's physical outputs for `images` (direct call, inference mode)."""
    chunks = []
    for start in range(0, len(images), batch_size):
        raw = model(images[start : start + batch_size], training=False)
        chunks.append(physical_outputs_np({k: np.asarray(v) for k, v in raw.items()}, spec))
    return {name: np.concatenate([c[name] for c in chunks]) for name in spec.output_names}


def max_scaled_difference(actual: Mapping, reference: Mapping) -> dict[str, float]:
    """Per output: max |actual - reference| / max(1, |reference|).

    Absolute for values of order one and below, relative for large ones (a target such
    as log10 of a mass near -23 carries float32 rounding of about 2e-6 on its own).
    """
    result = {}
    for name, ref in reference.items():
        ref = np.asarray(ref, np.float64)
        got = np.asarray(actual[name], np.float64).reshape(ref.shape)
        scale = np.maximum(1.0, np.abs(ref))
        result[name] = float(np.max(np.abs(got - ref) / scale)) if ref.size else 0.0
    return result


def max_abs_difference(actual: Mapping, reference: Mapping) -> dict[str, float]:
    """Per output: max |actual - reference| (physical units)."""
    result = {}
    for name, ref in reference.items():
        ref = np.asarray(ref, np.float64)
        got = np.asarray(actual[name], np.float64).reshape(ref.shape)
        result[name] = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    return result


def mean_absolute_errors(outputs: Mapping, targets: Mapping, spec: ExportSpec) -> dict[str, float]:
    """Per target: mean |prediction - truth| over examples whose truth is defined (physical)."""
    result = {}
    for target in spec.targets:
        if target not in targets:
            continue
        truth = np.asarray(targets[target], np.float64)
        defined = np.isfinite(truth)
        if defined.any():
            predicted = np.asarray(outputs[target], np.float64)[defined]
            result[target] = float(np.mean(np.abs(predicted - truth[defined])))
    return result

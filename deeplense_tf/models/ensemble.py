"""The deep-ensemble model: member models combined into one Gaussian mixture per target.

Each member predicts, per target, a Gaussian (mean, log-variance) in its *own*
standardised units, or a point estimate. `GaussianMixtureCombine` de-standardises every
member to physical units, forms the equally weighted mixture, and returns the mixture's
mean and total variance,

    mu  = mean_i mu_i
    var = mean_i var_i + mean_i (mu_i - mu)^2      (aleatoric + epistemic)

re-standardised with the output statistics (in `deeplense_tf.training.ensemble`, the
first member's). The layer lives here, with the other layers a saved model is made
of, so loading an ensemble run (`deeplense_tf.runs.Run.load`) needs only `models/`;
making an ensemble run folder from finished runs is `training/ensemble.py`.

Those two moments are what an exported ensemble serves. The ensemble's predictive
*distribution* is the mixture itself: with Student-t members a Gaussian of the same
moments has tails that are too light. `mixture_components` gives the members'
distributions in physical units (`Run.predict` returns them as `components`, which
evaluation's coverage and the calibration score through `deeplense_tf.predictive`),
stretched about the mixture's mean by the calibration scale in the layer, so that their
mixture has exactly the layer's mean and variance.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from deeplense_tf.errors import RunError
from deeplense_tf.models.heads import LogVarianceOffsetLayer

_MIN_VARIANCE = 1e-12
#: Degrees of freedom that stand for a Gaussian member in a mixture with Student-t ones:
#: such a t differs from the Gaussian by under 1e-5 of the density within 5 stds.
GAUSSIAN_DF = 1e6


@keras.saving.register_keras_serializable(package="deeplense")
class GaussianMixtureCombine(LogVarianceOffsetLayer):
    """Combine member predictions of one target into the mixture's (mean, log-variance).

    Args:
        member_means, member_stds: each member's target standardisation (physical units).
        output_mean, output_std: standardisation of the combined output (physical units).
    Input: a list of member outputs, `[B, 2]` (mean, log-variance) or `[B, 1]` (point).
    Output: `[B, 2]` (mean, log-variance) in the output's standardised units.
    """

    def __init__(self, member_means, member_stds, output_mean, output_std, **kwargs):
        super().__init__(**kwargs)
        self.member_means = [float(m) for m in member_means]
        self.member_stds = [float(s) for s in member_stds]
        self.output_mean = float(output_mean)
        self.output_std = float(output_std)

    def call(self, member_outputs):
        means, variances = [], []
        for output, mean, std in zip(member_outputs, self.member_means, self.member_stds):
            output = ops.cast(output, "float32")
            means.append(output[:, 0:1] * std + mean)
            # Gaussian [B, 2] and Student-t [B, 3] members: column 1 is the log-variance
            # (a t member enters the mixture through its mean and variance).
            if output.shape[-1] >= 2:
                variances.append(ops.exp(output[:, 1:2]) * std**2)
            else:
                variances.append(ops.zeros_like(output[:, 0:1]))
        mu_i = ops.stack(means, axis=0)
        mu = ops.mean(mu_i, axis=0)
        variance = ops.mean(ops.stack(variances, axis=0), axis=0) + ops.mean(
            ops.square(mu_i - mu), axis=0
        )
        variance = ops.maximum(variance, _MIN_VARIANCE)
        standard_mean = (mu - self.output_mean) / self.output_std
        standard_log_var = ops.log(variance / self.output_std**2) + self.log_variance_offset
        return ops.concatenate([standard_mean, standard_log_var], axis=-1)

    def compute_output_shape(self, input_shapes):
        return (input_shapes[0][0], 2)

    def get_config(self):
        config = super().get_config()
        config.update(
            member_means=self.member_means,
            member_stds=self.member_stds,
            output_mean=self.output_mean,
            output_std=self.output_std,
        )
        return config


def build_ensemble_model(members, targets, output_stats) -> keras.Model:
    """Combine member models into one functional model.

    Args:
        members: list of `(model, target_stats)`; each model maps `image` to a dict of
            per-target outputs; `target_stats` is
            `{target: {"mean", "std"}}` in physical units.
        targets: target names the ensemble predicts (every member must predict them).
        output_stats: `{target: {"mean", "std"}}` for the ensemble's standardised output.
    """
    if len(members) < 2:
        raise RunError(f"an ensemble needs at least two runs, got {len(members)}")
    input_shape = tuple(members[0][0].inputs[0].shape[1:])
    image = keras.Input(shape=input_shape, name="image")
    per_target = {name: [] for name in targets}
    for i, (model, _) in enumerate(members):
        member_shape = tuple(model.inputs[0].shape[1:])
        if member_shape != input_shape:
            raise RunError(
                f"member {i} takes images of shape {member_shape}, member 0 takes {input_shape}"
            )
        names = list(model.output_names)
        missing = [t for t in targets if t not in names]
        if missing:
            raise RunError(f"member {i} does not predict {', '.join(missing)} (it predicts {names})")
        # Re-wrap each member under a unique name so nested layer names cannot clash.
        member = keras.Model(inputs=model.inputs, outputs=model.outputs, name=f"member_{i}")
        member_outputs = member(image)
        if not isinstance(member_outputs, (list, tuple)):
            member_outputs = [member_outputs]
        for name, output in zip(names, member_outputs):
            if name in per_target:
                per_target[name].append(output)
    outputs = {}
    for name in targets:
        outputs[name] = GaussianMixtureCombine(
            member_means=[stats[name]["mean"] for _, stats in members],
            member_stds=[stats[name]["std"] for _, stats in members],
            output_mean=output_stats[name]["mean"],
            output_std=output_stats[name]["std"],
            name=name,
        )(per_target[name])
    return keras.Model(inputs=image, outputs=outputs, name="ensemble")


def member_models(model) -> list[keras.Model]:
    """The member models of an ensemble model (`member_0`, `member_1`, ... in order); [] for
    any other model."""
    members = {layer.name: layer for layer in model.layers
               if isinstance(layer, keras.Model) and layer.name.startswith("member_")}
    return [members[f"member_{i}"] for i in range(len(members)) if f"member_{i}" in members]


def members_forward(model):
    """`images [B, H, W, C] -> [{target: raw output [B, width]}, ...]`, one dict per member
    (each in its own standardised units), or None when `model` is no ensemble."""
    members = member_models(model)
    if not members:
        return None
    import tensorflow as tf

    names = [list(member.output_names) for member in members]

    @tf.function
    def forward(images):
        outputs = []
        for member in members:
            out = member(images, training=False)
            outputs.append(out if isinstance(out, (list, tuple)) else [out])
        return outputs

    def run(images):
        return [{name: np.asarray(o, np.float64) for name, o in zip(member_names, out)}
                for member_names, out in zip(names, forward(images))]

    return run


def mixture_components(model, member_outputs, targets) -> dict:
    """The ensemble's members' predictive distributions in physical units.

    Args:
        model: the ensemble model (its `GaussianMixtureCombine` layers, named by target).
        member_outputs: `[{target: raw [N, width]}]` per member (`members_forward`).
        targets: the targets to return.

    Returns `{target: {"mean", "std"[, "df"], "group_size"}}`, arrays `[M, N]`
    (`deeplense_tf.predictive.Predictive.from_prediction`'s `components`): each member's
    mean and std, both stretched about the mixture mean by the layer's calibration scale
    (so the mixture's mean and variance are the layer's output), and the Student-t
    members' df (`GAUSSIAN_DF` for Gaussian members beside them; no df when all are
    Gaussian). A target with a point member is left out: a point estimate is no
    distribution to mix.
    """
    out = {}
    for target in targets:
        layer = model.get_layer(target)
        raw = [outputs[target] for outputs in member_outputs]
        if any(r.shape[-1] < 2 for r in raw):
            continue
        means = np.stack([r[:, 0] * s + m for r, m, s in zip(raw, layer.member_means, layer.member_stds)])
        stds = np.stack([np.exp(0.5 * r[:, 1]) * s for r, s in zip(raw, layer.member_stds)])
        scale = float(np.exp(0.5 * float(layer.log_variance_offset.numpy())))
        centre = means.mean(axis=0, keepdims=True)
        entry = {"mean": centre + scale * (means - centre), "std": scale * stds, "group_size": len(raw)}
        if any(r.shape[-1] >= 3 for r in raw):
            entry["df"] = np.stack([r[:, 2] if r.shape[-1] >= 3 else np.full(len(r), GAUSSIAN_DF) for r in raw])
        out[target] = entry
    return out

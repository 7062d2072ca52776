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
"""

from __future__ import annotations

import keras
from keras import ops

from deeplense_tf.errors import RunError
from deeplense_tf.models.heads import LogVarianceOffsetLayer

_MIN_VARIANCE = 1e-12


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

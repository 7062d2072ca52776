"""Deep ensembles: several trained runs combined into one Keras model.

Each member predicts, per target, a Gaussian (mean, log-variance) in its *own*
standardised units, or a point estimate. The ensemble de-standardises every member
to physical units, forms the equally weighted mixture, and returns the mixture's
mean and total variance,

    mu  = mean_i mu_i
    var = mean_i var_i + mean_i (mu_i - mu)^2      (aleatoric + epistemic)

re-standardised with the first member's target statistics. The mixture of members
whose stds were each calibrated is too wide (every member's variance already covers
its own error, and the spread of the means comes on top), so `ensemble_runs` calibrates
the ensemble's stds once more on the validation split of the first member's data
(`deeplense_tf.evaluation.calibration`) when that data is at hand. The result is an
ordinary Gaussian-head run: `Run.load`, `evaluate`, `export` and `cluster` treat it
like any other. An ensemble has no single `embedding` layer: cluster one of its
members' runs instead.

    from deeplense_tf.training.ensemble import ensemble_runs
    run = ensemble_runs(["runs/seed0", "runs/seed1", "runs/vit"], "runs/ensemble")
    run.predict(images)            # {target: {"mean", "std"}}, physical units

The ensemble's run folder holds what any run folder holds (`model.keras`,
`config.yaml`, `target_stats.json`, `data_manifest.json`, `run.json`); its config is
the first member's with `model: {name: ensemble, head: gaussian, members: [...]}`
(a record of where it came from, not a config `deeplense train` can repeat).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import keras
from keras import ops

from deeplense_tf import __version__
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
            if output.shape[-1] == 2:
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


# Files an ensemble run folder is made of (what --overwrite replaces).
_ENSEMBLE_OUTPUTS = ("model.keras", "config.yaml", "target_stats.json", "data_manifest.json",
                     "run.json", "metrics.json", "history.csv", "plots", "logs", "backup")


def check_members(runs) -> list[str]:
    """The targets of an ensemble of `runs` (loaded `Run`s), in the first run's order.

    Raises RunError naming the run and what differs from the first one: targets, input
    shape, or the data set's preset (members must predict the same quantities from the
    same kind of image).
    """
    if len(runs) < 2:
        raise RunError(f"an ensemble needs at least two runs, got {len(runs)}")
    first = runs[0]
    seen = {}
    for run in runs:
        key = str(Path(run.path).resolve()) if run.path is not None else id(run)
        if key in seen:
            raise RunError(f"{run.path}: given twice; an ensemble's members must differ")
        seen[key] = run
    first_preset = (first.manifest or {}).get("preset")
    for run in runs[1:]:
        if sorted(run.targets) != sorted(first.targets):
            raise RunError(
                f"runs of different targets: {run.path} predicts {', '.join(run.targets)}, "
                f"{first.path} predicts {', '.join(first.targets)}"
            )
        if tuple(run.input_shape) != tuple(first.input_shape):
            raise RunError(
                f"runs of different input shapes: {run.path} takes images of "
                f"{list(run.input_shape)}, {first.path} takes {list(first.input_shape)}"
            )
        preset = (run.manifest or {}).get("preset")
        if first_preset and preset and preset != first_preset:
            raise RunError(
                f"runs trained on different data: {run.path} on preset {preset!r}, "
                f"{first.path} on {first_preset!r}"
            )
    return list(first.targets)


def ensemble_runs(run_dirs, out_dir, *, overwrite: bool = False, calibrate: bool = True):
    """Combine finished runs into one ensemble run folder; returns it as a loaded `Run`.

    Args:
        run_dirs: two or more run folders predicting the same targets from images of
            the same shape (any architectures, either head; a point-head member adds
            no aleatoric variance, only its disagreement with the others).
        out_dir: the ensemble's run folder (created). It must not hold a run unless
            `overwrite`, and must not be one of the members.
        overwrite: replace a run already in `out_dir`.
        calibrate: rescale the mixture's stds on the validation split of the first
            member's training data, if that data exists here (recorded in
            `metrics.json`; `deeplense calibrate --run OUT --data PATH` does it later).

    Returns:
        `Run.load(out_dir)`: Gaussian head, standardised with the first member's target
        statistics, `run.info["members"]` listing the members' folders.
    """
    from deeplense_tf.training import run as run_files
    from deeplense_tf.training.config import save_config, write_text_atomic
    from deeplense_tf.training.run import Run
    from deeplense_tf.training.trainer import save_model_atomic

    paths = [Path(p).expanduser().resolve() for p in run_dirs]
    out = Path(out_dir).expanduser().resolve()
    if out in paths:
        raise RunError(f"--out {out_dir}: is one of the ensemble's runs; choose a new folder")
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out_dir}: exists and is not a folder")
    if (out / run_files.RUN_FILE).exists() and not overwrite:
        raise RunError(
            f"--out {out_dir}: holds a run; pass --overwrite to replace it, or choose another folder"
        )
    runs = [Run.load(p) for p in paths]
    targets = check_members(runs)
    output_stats = {t: dict(runs[0].target_stats[t]) for t in targets}
    model = build_ensemble_model([(r.model, r.target_stats) for r in runs], targets, output_stats)

    if overwrite:
        for name in _ENSEMBLE_OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    members = [str(p) for p in paths]
    config = copy.deepcopy(runs[0].config)
    config["model"] = {
        "name": "ensemble",
        "head": "gaussian",
        "members": members,
        "member_models": [str(r.info.get("model") or r.model.name) for r in runs],
        "member_heads": [r.head for r in runs],
    }
    config.setdefault("data", {})["targets"] = targets
    save_model_atomic(model, out / run_files.MODEL_FILE)
    save_config(config, out / run_files.CONFIG_FILE)

    def write_json(name, value):
        write_text_atomic(out / name, json.dumps(value, indent=2) + "\n")

    write_json(run_files.TARGET_STATS_FILE, output_stats)
    if runs[0].manifest is not None:
        write_json(run_files.MANIFEST_FILE, runs[0].manifest)
    write_json(run_files.RUN_FILE, {  # last: marks the folder complete
        "format_version": run_files.FORMAT_VERSION,
        "deeplense_tf": __version__,
        "model": "ensemble",
        "head": "gaussian",
        "targets": targets,
        "input_shape": [int(d) for d in runs[0].input_shape],
        "complete": True,
        "members": members,
    })
    data = (config.get("data") or {}).get("path")
    if calibrate and data and Path(data).exists():
        from deeplense_tf.evaluation.calibration import calibrate_run

        calibrate_run(out, data, verbose=False)
    return Run.load(out)

"""Deep ensembles: several trained runs combined into one ensemble run folder.

Each member predicts, per target, a Gaussian (mean, log-variance) in its *own*
standardised units, or a point estimate. The ensemble model (`deeplense_tf.models.ensemble`)
de-standardises every member to physical units, forms the equally weighted mixture, and
returns the mixture's mean and total variance,

    mu  = mean_i mu_i
    var = mean_i var_i + mean_i (mu_i - mu)^2      (aleatoric + epistemic)

re-standardised with the first member's target statistics. The mixture of members
whose stds were each calibrated is too wide (every member's variance already covers
its own error, and the spread of the means comes on top), so `ensemble_runs` calibrates
the ensemble's stds once more on the validation split of the first member's data
(`deeplense_tf.training.calibrate`) when that data is at hand. The result is an
ordinary Gaussian-head run: `Run.load`, `evaluate`, `export` and `cluster` treat it
like any other. Its model outputs the mixture's mean and std (what an export serves);
when every member is probabilistic `Run.predict` also returns the mixture itself as
`components` (`deeplense_tf.models.ensemble.mixture_components`), so Student-t members
keep their tails in evaluation's coverage and in this calibration, which stretches the
whole mixture about its mean. An ensemble has no single `embedding` layer: cluster one of its
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
from pathlib import Path

from deeplense_tf.errors import RunError
from deeplense_tf.files import write_json_atomic
from deeplense_tf.models.ensemble import GaussianMixtureCombine, build_ensemble_model
from deeplense_tf.runs import layout
from deeplense_tf.runs.run import Run

__all__ = ["GaussianMixtureCombine", "build_ensemble_model", "check_members", "ensemble_runs"]

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
    classifiers = [str(run.path) for run in runs if run.head == "softmax"]
    if classifiers:  # the mixture layer combines Gaussians; averaging probabilities is not built
        raise RunError(f"{classifiers[0]}: a classifier (softmax head); an ensemble combines regressors")
    joint = [str(run.path) for run in runs if run.head == "full_covariance"]
    if joint:  # the mixture layer mixes per-target Gaussians: it would drop the correlations
        raise RunError(f"{joint[0]}: a full_covariance run; ensembles of joint Gaussians are not built "
                       "yet (the per-target mixture would drop the correlations)")
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
    from deeplense_tf.training.calibrate import calibrate_run
    from deeplense_tf.training.config import save_config

    member_dirs = [Path(p).expanduser().resolve() for p in run_dirs]
    out = Path(out_dir).expanduser().resolve()
    if out in member_dirs:
        raise RunError(f"--out {out_dir}: is one of the ensemble's runs; choose a new folder")
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out_dir}: exists and is not a folder")
    paths = layout.RunPaths(out)
    if paths.info.exists() and not overwrite:
        raise RunError(
            f"--out {out_dir}: holds a run; pass --overwrite to replace it, or choose another folder"
        )
    runs = [Run.load(p) for p in member_dirs]
    targets = check_members(runs)
    output_stats = {t: dict(runs[0].target_stats[t]) for t in targets}
    model = build_ensemble_model([(r.model, r.target_stats) for r in runs], targets, output_stats)

    if overwrite:
        layout.remove_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    members = [str(p) for p in member_dirs]
    config = copy.deepcopy(runs[0].config)
    config["model"] = {
        "name": "ensemble",
        "head": "gaussian",
        "members": members,
        "member_models": [str(r.info.get("model") or r.model.name) for r in runs],
        "member_heads": [r.head for r in runs],
    }
    config.setdefault("data", {})["targets"] = targets
    layout.save_model_atomic(model, paths.model)
    save_config(config, paths.config)
    write_json_atomic(paths.target_stats, output_stats)
    if runs[0].manifest is not None:
        write_json_atomic(paths.manifest, runs[0].manifest)
    write_json_atomic(paths.info, layout.run_info(  # last: marks the folder complete
        model="ensemble", head="gaussian", targets=targets, input_shape=runs[0].input_shape,
        complete=True, members=members,
    ))
    data = (config.get("data") or {}).get("path")
    if calibrate and data and Path(data).exists():
        calibrate_run(out, data, verbose=False)
    return Run.load(out)

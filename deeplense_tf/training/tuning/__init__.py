"""Hyperparameter search with KerasTuner, each trial a `deeplense train` run.

    from deeplense_tf.training.tuning import tune
    result = tune("data/model2", "tune/cnn", model="cnn", tuner="bayesian", max_trials=20)
    result.table              # pandas DataFrame, one row per trial (also OUT/results.csv)
    result.best_config        # an experiment config (also OUT/best_config.yaml)
    result.paths["best_run"]  # the best trial's folder: a run folder (evaluate, export, cluster)

A trial is an experiment config: the base config (the defaults, `--config`, the space
file's `config:` section) with each hyperparameter's value written to the config key it
stands for. It trains through the package's `train(config, out_dir)` into its trial
folder, so a trial is exactly the `deeplense train` run of its config (time budget,
early stopping, BatchNorm re-estimation, variance calibration) and is scored on what
that run saved; `deeplense train --config OUT/best_config.yaml` repeats the best one
(Hyperband: see `tune`).

Modules, one job each:
- `space`: search-space files and the built-in spaces (from the model registry);
- `hypermodel`: the one `DeepLenseHyperModel` (trial configs, training a trial,
  objectives and trial metrics);
- `search`: `DeepLenseTuner` (its `run_trial`), the oracles, results, `tune` and the
  distributed chief / workers mode.
"""

from deeplense_tf.training.tuning.hypermodel import (
    TRAIN_LOG_FILE,
    DeepLenseHyperModel,
    best_trial_config,
    build_hypermodel,
    default_objective,
    objective_choices,
    resolve_objective,
    trial_metrics,
)
from deeplense_tf.training.tuning.search import (
    BEST_CONFIG_FILE,
    PLOT_FILE,
    PROJECT_NAME,
    RESULTS_FILE,
    SETTINGS_FILE,
    TRIAL_RECORD_FILE,
    TUNERS,
    DeepLenseTuner,
    TuneResult,
    make_tuner,
    plot_scores,
    read_trials,
    resolve_search,
    results_table,
    tune,
)
from deeplense_tf.training.tuning.space import (
    AUTO_OBJECTIVE,
    COMMON_KEYS,
    COMMON_SPACE,
    Hyperparameter,
    SearchSpace,
    check_space_values,
    default_search_space,
    default_space_dict,
    hyperparameter_keys,
    load_search_space,
    parse_hyperparameter,
    parse_search_space,
)

__all__ = [
    "AUTO_OBJECTIVE",
    "BEST_CONFIG_FILE",
    "COMMON_KEYS",
    "COMMON_SPACE",
    "PLOT_FILE",
    "PROJECT_NAME",
    "RESULTS_FILE",
    "SETTINGS_FILE",
    "TRAIN_LOG_FILE",
    "TRIAL_RECORD_FILE",
    "TUNERS",
    "DeepLenseHyperModel",
    "DeepLenseTuner",
    "Hyperparameter",
    "SearchSpace",
    "TuneResult",
    "best_trial_config",
    "build_hypermodel",
    "check_space_values",
    "default_objective",
    "default_search_space",
    "default_space_dict",
    "hyperparameter_keys",
    "load_search_space",
    "make_tuner",
    "objective_choices",
    "parse_hyperparameter",
    "parse_search_space",
    "plot_scores",
    "read_trials",
    "resolve_objective",
    "resolve_search",
    "results_table",
    "trial_metrics",
    "tune",
]

"""Training: experiment configs, the one training loop (every tf.distribute strategy, time
budget, resume, fine-tuning), the end-of-run steps, ensembles and the tuner; it writes
the run folder that `deeplense_tf.runs` defines (docs/architecture.md).

    from deeplense_tf.training import load_config, train, Run
    config = load_config("quickstart", {"data.path": "data/model2"})
    run = train(config, "runs/quickstart")
    run.predict(images)

Names load lazily, so `from deeplense_tf.training import load_config` does not import
TensorFlow.
"""

from __future__ import annotations

from deeplense_tf._lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_CONFIG": "config",
    "load_config": "config",
    "save_config": "config",
    "validate_config": "config",
    "ExperimentConfig": "config",
    "load_experiment": "config",
    "apply_smoke": "config",
    "packaged_config_names": "config",
    "make_datasets": "datasets",
    "compile_model": "model_setup",
    "make_optimizer": "model_setup",
    "make_schedule": "model_setup",
    "make_strategy": "strategy",
    "train": "session",
    "TrainingDiverged": "loop",
    "calibrate_run": "calibrate",
    "Run": "run",  # deeplense_tf.runs.Run, for code that imported it from here
    "WarmupCosineDecay": "schedules",
    "PhasedSchedule": "schedules",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""Training: experiment configs, the training loop (every tf.distribute strategy, resume,
fine-tuning) and the run folder it leaves (docs/architecture.md).

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
    "apply_smoke": "config",
    "packaged_config_names": "config",
    "make_datasets": "trainer",
    "compile_model": "trainer",
    "make_optimizer": "trainer",
    "make_schedule": "trainer",
    "make_strategy": "trainer",
    "train": "trainer",
    "TrainingDiverged": "trainer",
    "Run": "run",
    "WarmupCosineDecay": "schedules",
    "PhasedSchedule": "schedules",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

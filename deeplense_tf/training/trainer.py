"""Moved: the trainer is split by job (docs/architecture.md). These names stay importable
from here until every importer uses the new modules; new code imports from those:

- `session.py`: `train(config, out_dir)`;
- `loop.py`: the training loop, early stopping, time budget, `TrainingDiverged`;
- `resume.py`: backups; `finetune.py`: init weights, freezing; `finish.py`: the end of a run;
- `strategy.py`, `datasets.py`, `model_setup.py`: strategy, pipelines, model/optimizer/losses;
- `deeplense_tf.runs`: `save_model_atomic` and the run folder's layout.
"""

from deeplense_tf.runs.layout import save_model_atomic
from deeplense_tf.training.datasets import count_usable_examples, make_datasets
from deeplense_tf.training.finetune import load_init_weights
from deeplense_tf.training.loop import TrainingDiverged, early_stopping_update, epochs_that_fit
from deeplense_tf.training.model_setup import (
    build_model_from_config,
    compile_model,
    make_optimizer,
    make_schedule,
)
from deeplense_tf.training.resume import RESUME_MAY_CHANGE, read_backup, write_backup
from deeplense_tf.training.session import train
from deeplense_tf.training.strategy import _STRATEGY_CACHE, make_strategy

__all__ = [
    "RESUME_MAY_CHANGE",
    "_STRATEGY_CACHE",
    "TrainingDiverged",
    "build_model_from_config",
    "compile_model",
    "count_usable_examples",
    "early_stopping_update",
    "epochs_that_fit",
    "load_init_weights",
    "make_datasets",
    "make_optimizer",
    "make_schedule",
    "make_strategy",
    "read_backup",
    "save_model_atomic",
    "train",
    "write_backup",
]

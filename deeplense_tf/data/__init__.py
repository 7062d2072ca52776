"""Data sets: the record schema, readers for every supported source, D4 augmentation and
the tf.data pipeline (see docs/architecture.md and docs/data-formats.md).

The public names below load lazily, so `import deeplense_tf.data.schema` (in simulation
worker processes, say) does not import TensorFlow.
"""

from __future__ import annotations

from deeplense_tf._lazy import lazy_exports

_EXPORTS = {
    "Examples": "readers",
    "check_split_count": "readers",
    "check_target_names": "readers",
    "load_examples": "readers",
    "read_manifest": "readers",
    "validate_images": "readers",
    "build_dataset": "pipeline",
    "count_usable_examples": "pipeline",
    "resolve_target_stats": "pipeline",
    "verify_split": "pipeline",
    "d4_images": "augment",
    "transform_targets": "augment",
    "inverse_transform_targets": "augment",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

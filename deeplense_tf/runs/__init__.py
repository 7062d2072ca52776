"""The run folder as a contract: `Run`, its layout, and how to write into it.

    from deeplense_tf.runs import Run
    run = Run.load("runs/resnet")          # RunError naming what is missing or incompatible
    run.predict(images)                    # {target: {"mean", "std"}}, physical units
    run.paths.metrics, run.calibration     # where things are; what calibration did

Everything that reads a run folder (evaluation, clustering, export, serving, the
quickstart) imports it from here; `training` writes it through the same names
(`layout`). Loading a run needs `models/` only. Names load lazily, so importing this
package does not import TensorFlow.
"""

from __future__ import annotations

from deeplense_tf._lazy import lazy_exports

_EXPORTS = {
    "Run": "run",
    "check_examples_fit": "run",
    "RunPaths": "layout",
    "FORMAT_VERSION": "layout",
    "MODEL_FILE": "layout",
    "CONFIG_FILE": "layout",
    "TARGET_STATS_FILE": "layout",
    "MANIFEST_FILE": "layout",
    "RUN_FILE": "layout",
    "HISTORY_FILE": "layout",
    "METRICS_FILE": "layout",
    "RUN_OUTPUTS": "layout",
    "read_json": "layout",
    "run_info": "layout",
    "save_model_atomic": "layout",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

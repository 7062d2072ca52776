"""Export a run for TF Serving (SavedModel) and for phones and edge devices (TFLite/LiteRT).

    from deeplense_tf.export import export_run
    paths = export_run("runs/resnet", "export", tflite="fp32,int8", on_device=True)
    paths["version_dir"]      # export/deeplense/1 (SavedModel + tflite/ + export.json)

Modules: `spec` (output names and units shared by every artefact), `savedmodel`
(signatures, in-graph input checks, warm-up requests, models.config), `tflite`
(fp32 / fp16 / dynamic_int8 / int8 variants, builtin ops only), `on_device` (a TFLite
model that fine-tunes its head on the device), `exporter` (`export_run`, atomic
version folders) and `export_cli` (`deeplense export`).

Names load lazily, so importing this package does not import TensorFlow.
"""

from __future__ import annotations

from deeplense_tf._lazy import lazy_exports

_EXPORTS = {
    "export_run": "exporter",
    "next_version": "exporter",
    "ExportSpec": "spec",
    "VARIANTS": "tflite",
    "parse_variants": "tflite",
    "run_tflite": "tflite",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

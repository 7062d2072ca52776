"""deeplense-tf: learn dark-matter properties from strong-lensing images with TensorFlow/Keras.

Sub-packages follow the data flow (see docs/architecture.md):
simulation -> data -> models -> training -> evaluation / clustering / export -> serving.

Importing the package is cheap (no TensorFlow: simulation workers and `deeplense --help`
start fast), yet it registers every custom Keras object of the package, as keras-hub
does: the modules that define them are imported the moment Keras itself is (or at once,
when Keras is imported already), so `keras.saving.load_model("RUN/model.keras")` works
after a plain `import deeplense_tf`, whatever was imported first.
"""

import importlib
import importlib.util

from deeplense_tf._lazy import after_import

__version__ = "0.1.0"

if importlib.util.find_spec("tensorflow") is None:
    # One line the user can act on, instead of a ModuleNotFoundError deep in a submodule.
    raise ImportError(
        "deeplense-tf needs TensorFlow 2.21, which is not installed: "
        "pip install 'deeplense-tf[cpu]' (CPU) or 'deeplense-tf[gpu]' (NVIDIA GPU, CUDA)"
    )

# Every module that defines a `keras.saving.register_keras_serializable` object (a test
# keeps this list complete). None of them imports a module that imports Keras before it
# is fully defined, so importing them right after Keras cannot meet a half-built module.
KERAS_OBJECT_MODULES = (
    "deeplense_tf.models.layers",
    "deeplense_tf.models.heads",
    "deeplense_tf.training.schedules",
    "deeplense_tf.models.ensemble",
    "deeplense_tf.models.classification",
    "deeplense_tf.models.covariance",
)


def _register_keras_objects() -> None:
    for module in KERAS_OBJECT_MODULES:
        importlib.import_module(module)


after_import("keras", _register_keras_objects)

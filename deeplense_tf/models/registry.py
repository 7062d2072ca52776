"""Name -> encoder builder registry, `build_model`, and the encoder/head split.

A builder is a function `builder(x, **options) -> features`: it takes the
preprocessed image tensor `[B, h, w, c]` (after `ImagePreprocess`) and returns
the pooled feature vector `[B, D]`. Its keyword arguments, with their defaults,
are the model's options; `build_model` rejects any other option by name.

Layer naming rule (what fine-tuning and clustering rely on):
- `image`: the input, raw pixels `[B, H, W, C]`.
- `preprocess`: `ImagePreprocess` (crop + normalisation).
- everything between `preprocess` and `embedding` is the encoder.
- `embedding`: identity layer whose output is the pooled feature vector `[B, D]`
  (float32).
- after it, the head: optional `head_dropout`, then per target either `<target>`
  (point) or `head_<target>` + `<target>` (Gaussian).
`encoder_layers(model)` returns `preprocess` through `embedding` (the layers to
freeze when fine-tuning only the head); `head_layers(model)` returns the rest.

One `register` call holds everything about an architecture (an `Architecture`): its
builder, its search space for `deeplense tune`, its tiny test configuration and its
int8 export rule. The CLI, the tuner, the tests and the export read it from here:

    @register("mlp", search_space={"width": {"values": [64, 128]}},
              tiny={"width": 4}, int8_float_layers=("mlp_norm",))
    def build_mlp(x, *, width: int = 128): ...
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import keras

from deeplense_tf.data import transforms
from deeplense_tf.errors import ConfigError
from deeplense_tf.models.covariance import HEAD as FULL_COVARIANCE
from deeplense_tf.models.covariance import JOINT_OUTPUT, add_full_covariance_head
from deeplense_tf.models.cut import cut_model
from deeplense_tf.models.heads import HEADS, add_heads
from deeplense_tf.models.layers import ImagePreprocess


@dataclass(frozen=True)
class Architecture:
    """Everything the package knows about one architecture.

    Attributes:
        name: the registered name (`model.name` in a config, the Keras model's name).
        builder: `builder(x, **options) -> features [B, D]`; its keyword-only arguments,
            with their defaults, are the model's options.
        search_space: the architecture's own part of the default search space of
            `deeplense tune`, in space-file form (`{hyperparameter: spec}`, see
            `training/tuner/space.py`); the tuner adds the hyperparameters every model
            has (learning rate, dropout, head ...). Keys are builder options or `aliases`.
        aliases: hyperparameter name -> builder option (`depth` -> `blocks`), so that
            search spaces speak of depth and width across architectures.
        tiny: options of a seconds-sized model with the same topology, for tests.
        int8_float_layers: layers the full-int8 TFLite variant keeps in float32 besides
            the rule every architecture gets (`int8_float_layer_names`).
    """

    name: str
    builder: Callable
    search_space: Mapping = field(default_factory=dict)
    aliases: Mapping = field(default_factory=dict)
    tiny: Mapping = field(default_factory=dict)
    int8_float_layers: tuple = ()


_ARCHITECTURES: dict[str, Architecture] = {}

#: Registered model names, in registration order. Extend it with `register`.
MODEL_NAMES: list[str] = []

#: Options every model takes, handled by `build_model` itself.
COMMON_OPTIONS = {"dropout": 0.0}


def register(name: str, builder: Callable | None = None, *, search_space: Mapping | None = None,
             aliases: Mapping | None = None, tiny: Mapping | None = None,
             int8_float_layers: Iterable[str] = ()):
    """Register an architecture (see `Architecture` for the fields).

    `register("cnn", build_cnn, ...)` registers and returns the builder; without
    `builder` it is a decorator (`@register("cnn", ...)`). Registering another builder
    under a taken name is a ValueError; an alias must name a builder option.
    """

    def decorator(fn: Callable) -> Callable:
        known = _ARCHITECTURES.get(name)
        if known is not None and known.builder is not fn:
            raise ValueError(f"model name {name!r} is already registered")
        entry = Architecture(
            name=name,
            builder=fn,
            search_space=copy.deepcopy(dict(search_space or {})),
            aliases=dict(aliases or {}),
            tiny=copy.deepcopy(dict(tiny or {})),
            int8_float_layers=tuple(int8_float_layers),
        )
        options = _builder_options(fn)
        for alias, option in entry.aliases.items():
            if option not in options:
                raise ValueError(f"model {name!r}: alias {alias!r} names {option!r}, not an option")
        for option in entry.tiny:
            if option not in options and option not in COMMON_OPTIONS:
                raise ValueError(f"model {name!r}: tiny option {option!r} is not an option")
        if known is None:
            MODEL_NAMES.append(name)
        _ARCHITECTURES[name] = entry
        return fn

    return decorator if builder is None else decorator(builder)


def unregister(name: str) -> None:
    """Remove a registered architecture (tests that register their own)."""
    _ARCHITECTURES.pop(name, None)
    if name in MODEL_NAMES:
        MODEL_NAMES.remove(name)


def get_architecture(name: str) -> Architecture:
    """The registry entry of `name`; ConfigError listing the names for an unknown one."""
    if name not in _ARCHITECTURES:
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    return _ARCHITECTURES[name]


def _get_builder(name: str) -> Callable:
    return get_architecture(name).builder


def _builder_options(builder: Callable) -> dict:
    params = inspect.signature(builder).parameters.values()
    return {p.name: p.default for p in params if p.kind == inspect.Parameter.KEYWORD_ONLY}


def tiny_options(name: str) -> dict:
    """Options of a seconds-sized model of architecture `name` (its `tiny` entry)."""
    return copy.deepcopy(dict(get_architecture(name).tiny))


def model_options(name: str) -> dict:
    """The options model `name` accepts, with their defaults (common ones included)."""
    return {**_builder_options(_get_builder(name)), **COMMON_OPTIONS}


def _check_inputs(name, input_shape, targets, head, normalization, crop):
    shape = tuple(input_shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ConfigError(f"model {name!r}: input_shape must be (H, W, C), got {input_shape!r}")
    targets = list(targets)
    if not targets:
        raise ConfigError(f"model {name!r}: no targets given")
    if len(set(targets)) != len(targets):
        raise ConfigError(f"model {name!r}: duplicate target names in {targets}")
    reserved = {"image", "preprocess", "embedding", "head_dropout", JOINT_OUTPUT}
    for target in targets:
        if not isinstance(target, str) or not target or "/" in target or target in reserved:
            raise ConfigError(
                f"model {name!r}: target name {target!r} cannot name a layer "
                f"(non-empty, no '/', not one of {sorted(reserved)})"
            )
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; choose from {', '.join(HEADS)}")
    if normalization not in transforms.NORMALIZATIONS:
        raise ConfigError(
            f"unknown normalization {normalization!r}; choose from "
            f"{', '.join(transforms.NORMALIZATIONS)}"
        )
    if crop is not None and (not isinstance(crop, int) or crop <= 0 or crop > min(shape[:2])):
        raise ConfigError(
            f"crop {crop!r} must be a positive number of pixels no larger than the image "
            f"({shape[0]}x{shape[1]})"
        )
    return shape, targets


def build_model(
    name: str,
    input_shape,
    targets,
    *,
    head: str = "gaussian",
    normalization: str = "peak_asinh",
    crop: int | None = None,
    num_classes: int | None = None,
    **options,
) -> keras.Model:
    """Build the functional model `image -> preprocess -> encoder -> embedding -> heads`.

    Args:
        name: a name from `MODEL_NAMES`.
        input_shape: `(H, W, C)` of the raw images (`(H, W)` means one channel).
        targets: target names; one output per target.
        head: "gaussian" (outputs `[B, 2]` = mean, log-variance) or "point" (`[B, 1]`),
            standardised units.
        normalization: per-image normalisation inside the model (`transforms.NORMALIZATIONS`).
        crop: centre crop in pixels, or None.
        num_classes: the softmax head's number of classes (`targets` is then
            `[CLASS_TARGET]`; see `classification`).
        **options: builder options (see `model_options(name)`), plus `dropout` (rate
            before the head).

    Returns:
        An uncompiled `keras.Model` named `name` with input `image` and a dict output
        keyed by target. Raises `ConfigError` for an unknown name, option or argument.
    """
    builder = _get_builder(name)
    shape, targets = _check_inputs(name, input_shape, targets, head, normalization, crop)
    allowed = model_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown option {unknown[0]!r} for model {name!r}; allowed: {', '.join(sorted(allowed))}"
        )
    dropout = options.pop("dropout", COMMON_OPTIONS["dropout"])
    if not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model {name!r}: dropout must be in [0, 1), got {dropout}")

    image = keras.Input(shape=shape, name="image")
    x = ImagePreprocess(normalization, crop, name="preprocess")(image)
    features = builder(x, **options)  # builders raise ConfigError for bad option values
    if len(features.shape) != 2:
        raise ValueError(
            f"builder {name!r} returned features of shape {features.shape}, not [B, D]"
        )
    features = keras.layers.Identity(name="embedding", dtype="float32")(features)
    if dropout > 0:
        features = keras.layers.Dropout(dropout, name="head_dropout")(features)
    if head == FULL_COVARIANCE:
        outputs = add_full_covariance_head(features, targets)
    else:
        outputs = add_heads(features, head, targets, num_classes)
    return keras.Model(image, outputs, name=name)


def _encoder_model(model: keras.Model) -> keras.Model:
    return cut_model(model, "embedding")


def embedding_model(model: keras.Model) -> keras.Model:
    """`image -> embedding` model sharing `model`'s layers (and weights)."""
    return _encoder_model(model)


def encoder_layers(model: keras.Model) -> list:
    """The layers from `preprocess` through `embedding` (inputs excluded), in graph order."""
    return [
        layer
        for layer in _encoder_model(model).layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]


def head_layers(model: keras.Model) -> list:
    """The layers after `embedding`: dropout and the per-target heads."""
    encoder = {id(layer) for layer in encoder_layers(model)}
    return [
        layer
        for layer in model.layers
        if id(layer) not in encoder and not isinstance(layer, keras.layers.InputLayer)
    ]


def set_encoder_trainable(model: keras.Model, trainable: bool) -> None:
    """Freeze (`False`) or unfreeze the encoder; recompile the model afterwards.

    Frozen BatchNormalization layers run in inference mode (Keras 3), so their
    statistics stay those of the pretrained encoder.
    """
    for layer in encoder_layers(model):
        layer.trainable = trainable


def require(condition: bool, model: str, option: str, value, expected: str) -> None:
    """Raise `ConfigError` naming `option` unless `condition` holds (for builders)."""
    if not condition:
        raise ConfigError(f"model {model!r}: option {option}={value!r} must be {expected}")


def spatial_size(x) -> int:
    """The smaller static side of an image tensor `[B, h, w, c]`."""
    return int(min(x.shape[1], x.shape[2]))


def int8_float_layer_names(model: keras.Model) -> set[str]:
    """Layers the `int8` TFLite variant keeps in float32 (`export/tflite.py`).

    The rule every architecture gets:
    - the input transforms: every layer without weights ahead of the first layer with
      weights (`ImagePreprocess`, and `PolarUnwrap` in the polar CNN-LSTM). They are
      fixed arithmetic on the faint pixels, where int8 saves no bytes and loses the arcs
      (keeping the polar resampling float halved the int8 loss of the 45-minute
      CNN-LSTM: BENCHMARKS.md);
    - the output layers (mean, log-variance and its calibration offset);
    plus the registry entry's `int8_float_layers` for a model named after a registered
    architecture. Nested models (ensemble members) are searched the same way, each with
    its own architecture's entry.
    """
    names = set()

    def visit(container):
        outputs = set(getattr(container, "output_names", None) or [])
        entry = _ARCHITECTURES.get(getattr(container, "name", None))
        own = set(entry.int8_float_layers) if entry is not None else set()
        leading = True  # still ahead of the first layer with weights
        for layer in getattr(container, "layers", []) or []:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if getattr(layer, "layers", None):
                visit(layer)  # a nested model: its own inputs, outputs and entry
                leading = False
                continue
            if (leading and not layer.weights) or layer.name in outputs or layer.name in own:
                names.add(layer.name)
            leading = leading and not layer.weights

    visit(model)
    return names

"""Fine-tuning: start from another run's weights, with the encoder frozen at first.

`training.init_from` names a finished run folder. Its weights are copied into the new
model layer by layer (matched by name) before training starts; for the first
`freeze_encoder_epochs` only the head trains, at the full learning rate, then every
layer trains at `finetune_lr_factor` times it (the two-phase schedule is
`model_setup.make_schedule`'s).

A self-supervised encoder (`deeplense pretrain`, run.json `head: projector`) has no head
and no targets: only the encoder's layers (`preprocess` through `embedding`) are copied,
and the head starts from its initialisation. The same holds between a regressor and a
classifier (`model.head: softmax`) in either direction.
"""

from __future__ import annotations

from pathlib import Path

from deeplense_tf.errors import ConfigError, RunError
from deeplense_tf.runs.layout import ENCODER_HEAD
from deeplense_tf.runs.run import Run


def resolve_init_from(config: dict, out_dir: Path, manifest: dict) -> Run | None:
    """The run `training.init_from` names, loaded, or None; fills in the config in place.

    `training.init_from` becomes an absolute path, and `data.targets` (when null) the
    source run's targets, which must then all be in the data set. Raises ConfigError
    when init_from is the output folder itself, RunError when the targets are missing.
    """
    t = config["training"]
    if not t["init_from"]:
        return None
    init = Path(t["init_from"]).expanduser().resolve()
    if init == Path(out_dir).resolve():
        raise ConfigError("training.init_from must be another run folder than --out")
    t["init_from"] = str(init)
    source = Run.load(init)
    if config["data"]["targets"] is None and source.head not in (ENCODER_HEAD, "softmax"):
        missing = [x for x in source.targets if x not in manifest["targets"]]
        if missing:
            raise RunError(
                f"cannot initialise from {init}: its targets {', '.join(missing)} are "
                f"not in {config['data']['path']} (targets there: {', '.join(manifest['targets'])})"
            )
        config["data"]["targets"] = list(source.targets)
    return source


def load_init_weights(model, source: Run, config: dict, input_shape) -> int:
    """Copy `source.model`'s weights into `model`, layer by layer (matched by name).

    Raises RunError naming what differs (model, head, targets, input shape, and the
    first layers whose weights do not fit). Returns the number of layers copied.
    """
    problems = []
    src_model_name = source.info.get("model")
    if src_model_name and src_model_name != config["model"]["name"]:
        problems.append(f"model {src_model_name!r} there, {config['model']['name']!r} here")
    # A regressor's encoder starts a classifier (softmax head) and the reverse: the heads
    # differ, the encoder layers are the same ones.
    heads = (source.head, config["model"]["head"])
    encoder_only = source.head == ENCODER_HEAD or ("softmax" in heads and heads[0] != heads[1])
    layers = model.layers
    if encoder_only:
        from deeplense_tf.models import encoder_layers

        layers = encoder_layers(model)
    else:
        if source.head != config["model"]["head"]:
            problems.append(f"head {source.head!r} there, {config['model']['head']!r} here")
        targets = list(model.output_names)
        if sorted(source.targets) != sorted(targets):
            problems.append(f"targets {source.targets} there, {targets} here")
    src_layers = {layer.name: layer for layer in source.model.layers}
    weight_problems, copied = [], 0
    for layer in layers:
        if not layer.weights:
            continue
        src = src_layers.get(layer.name)
        if src is None:
            weight_problems.append(f"layer {layer.name!r} does not exist there")
            continue
        shapes = [tuple(w.shape) for w in layer.weights]
        src_shapes = [tuple(w.shape) for w in src.weights]
        if shapes != src_shapes:
            weight_problems.append(f"layer {layer.name!r} weights {src_shapes} there, {shapes} here")
    if weight_problems and tuple(source.input_shape) != tuple(input_shape):
        problems.append(f"input shape {list(source.input_shape)} there, {list(input_shape)} here")
    problems.extend(weight_problems[:3])
    if len(weight_problems) > 3:
        problems.append(f"and {len(weight_problems) - 3} more layers")
    if problems:
        raise RunError(f"cannot initialise from {source.path}: " + "; ".join(problems))
    for layer in layers:
        if layer.weights:
            layer.set_weights(src_layers[layer.name].get_weights())
            copied += 1
    return copied


def encoder_frozen(config: dict, epoch: int) -> bool:
    """Whether the encoder is frozen in (0-based) `epoch`: the first
    `freeze_encoder_epochs` of a fine-tuning run."""
    t = config["training"]
    return bool(t["init_from"]) and epoch < t["freeze_encoder_epochs"]


def announces_phases(config: dict) -> bool:
    """Whether the run has a frozen phase worth announcing when it starts and ends."""
    t = config["training"]
    return bool(t["init_from"]) and bool(t["freeze_encoder_epochs"])

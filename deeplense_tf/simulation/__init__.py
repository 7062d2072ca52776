"""Lensing simulator: DeepLense presets on lenstronomy, and the TFRecord shard writer.

    from deeplense_tf.simulation import get_preset, simulate_example, write_dataset
    preset = get_preset("deeplense-model-2")            # axion only; classes="mix" for all
    example = simulate_example(preset, seed=0, index=7)  # image [64, 64, 1] float32, e-/s
    write_dataset(preset, num=2000, out_dir="data/model2", workers=2)

Importing this package does not import TensorFlow (worker processes rely on that); only
`write_dataset` does, in the parent process. See docs/simulation.md.
"""

from deeplense_tf.simulation.presets import (
    PRESET_NAMES,
    Instrument,
    Preset,
    get_preset,
    parse_classes,
)
from deeplense_tf.simulation.simulator import (
    draw_params,
    example_rngs,
    lenstronomy_inputs,
    render_image,
    simulate_example,
)
from deeplense_tf.simulation.writer import write_dataset

__all__ = [
    "PRESET_NAMES",
    "Instrument",
    "Preset",
    "draw_params",
    "example_rngs",
    "get_preset",
    "lenstronomy_inputs",
    "parse_classes",
    "render_image",
    "simulate_example",
    "write_dataset",
]

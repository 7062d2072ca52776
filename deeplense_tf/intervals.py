"""Central Gaussian intervals: the half-width for a nominal level and the level grid.

The lowest layer (standard library and numpy only): the variance calibration in
`deeplense_tf.models.calibration` fits to these levels and the coverage metrics in
`deeplense_tf.evaluation.metrics` report on them, so both must agree on one definition.
An interval "central at nominal level p" is `mean ± z * std` with `z = Φ⁻¹((1 + p) / 2)`.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

# Nominal levels of the calibration curve (expected vs observed coverage), and the ones
# the variance calibration matches.
CALIBRATION_LEVELS = tuple(np.round(np.linspace(0.05, 0.95, 19), 2).tolist()) + (0.99,)


def z_for_level(level: float) -> float:
    """Half-width in standard deviations of the central Gaussian interval holding `level`."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"coverage level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)

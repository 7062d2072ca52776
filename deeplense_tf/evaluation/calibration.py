"""Moved: the calibration maths to `deeplense_tf.models.calibration`, `calibrate_run` to
`deeplense_tf.training.calibrate`; these names stay importable from here for old code."""

from deeplense_tf.models.calibration import apply_variance_scale, fit_variance_scale  # noqa: F401
from deeplense_tf.training.calibrate import calibrate_run  # noqa: F401

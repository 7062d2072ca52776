"""Learning-rate schedules: linear warm-up then cosine decay, and phases of those.

Both are registered serializable (package `deeplense`), so a compiled model saved with
its optimizer reloads with `keras.saving.load_model` alone.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="deeplense")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak_learning_rate`, then cosine decay to `final_fraction` of it.

    With `w = warmup_steps` and `T = total_steps` (optimizer steps):
    - `step < w`: `peak * (step + 1) / w` (the first step already moves; no step at zero);
    - `w <= step <= T`: `peak * (f + (1 - f) * (1 + cos(pi * (step - w) / (T - w))) / 2)`;
    - `step > T`: `peak * f`.

    Args:
        peak_learning_rate: the rate reached at the end of warm-up.
        warmup_steps: length of the warm-up (0 = none).
        total_steps: step at which the cosine reaches its floor (warm-up included).
        final_fraction: floor as a fraction of the peak, in [0, 1).
    """

    def __init__(self, peak_learning_rate, warmup_steps, total_steps, final_fraction=0.0, name=None):
        super().__init__()
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(max(total_steps, 1))
        self.final_fraction = float(final_fraction)
        self.name = name

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak_learning_rate, tf.float32)
        warmup = float(self.warmup_steps)
        decay_steps = max(float(self.total_steps - self.warmup_steps), 1.0)
        progress = tf.clip_by_value((step - warmup) / decay_steps, 0.0, 1.0)
        cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
        decayed = peak * (self.final_fraction + (1.0 - self.final_fraction) * cosine)
        if self.warmup_steps <= 0:
            return decayed
        warm = peak * (step + 1.0) / warmup
        return tf.where(step < warmup, warm, decayed)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "final_fraction": self.final_fraction,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="deeplense")
class PhasedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Schedules run one after another; each phase counts its own steps from zero.

    `schedules[0]` runs for steps `[0, boundaries[0])`, `schedules[i]` from
    `boundaries[i - 1]` on, evaluated at `step - boundaries[i - 1]`. Fine-tuning uses two
    phases: head only at the full rate, then all layers at a lower one.
    """

    def __init__(self, schedules, boundaries, name=None):
        super().__init__()
        self.schedules = [
            s if isinstance(s, keras.optimizers.schedules.LearningRateSchedule)
            else keras.saving.deserialize_keras_object(s)
            for s in schedules
        ]
        self.boundaries = [int(b) for b in boundaries]
        if len(self.boundaries) != len(self.schedules) - 1:
            raise ValueError("PhasedSchedule needs one boundary fewer than schedules")
        self.name = name

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        rate = tf.cast(self.schedules[0](step), tf.float32)
        for boundary, schedule in zip(self.boundaries, self.schedules[1:]):
            later = tf.cast(schedule(tf.maximum(step - boundary, 0.0)), tf.float32)
            rate = tf.where(step >= boundary, later, rate)
        return rate

    def get_config(self):
        return {
            "schedules": [keras.saving.serialize_keras_object(s) for s in self.schedules],
            "boundaries": list(self.boundaries),
            "name": self.name,
        }


def warmup_cosine_numpy(steps, peak, warmup_steps, total_steps, final_fraction=0.0) -> np.ndarray:
    """The `WarmupCosineDecay` formula in NumPy (reference for tests and plots)."""
    steps = np.asarray(steps, np.float64)
    total_steps = max(int(total_steps), 1)
    progress = np.clip((steps - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    decayed = peak * (final_fraction + (1 - final_fraction) * 0.5 * (1 + np.cos(np.pi * progress)))
    if warmup_steps <= 0:
        return decayed
    return np.where(steps < warmup_steps, peak * (steps + 1) / warmup_steps, decayed)

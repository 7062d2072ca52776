"""The issue's on-device demo: a model trained on deeplense-model-2 images, fine-tuned on
the device (ai_edge_litert, `train` signature) with deeplense-model-3 images.

Simulates two small data sets and trains a small CNN for a few epochs, so it is slow
(minutes): `pytest -m slow tests/test_export_on_device_shift.py -s` prints the numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from deeplense_tf.export import exporter
from deeplense_tf.export import tflite as tflite_lib

TARGET = "log10_m_axion_ev"


def _mean_nll(outputs, truth):
    mean, std = outputs[TARGET], outputs[f"{TARGET}_std"]
    return float(np.mean(0.5 * np.log(2 * np.pi * std**2) + 0.5 * ((truth - mean) / std) ** 2))


@pytest.mark.slow
def test_fine_tuning_on_model_3_images_lowers_loss_and_held_out_error(tmp_path):
    from deeplense_tf.data import load_examples
    from deeplense_tf.simulation.writer import write_dataset
    from deeplense_tf.training import load_config, train

    model2, model3 = tmp_path / "model2", tmp_path / "model3"
    write_dataset("deeplense-model-2", 600, model2, seed=1, workers=2, progress=False)
    write_dataset("deeplense-model-3", 300, model3, seed=2, workers=2, val_fraction=0.1,
                  test_fraction=0.3, progress=False)
    config = load_config(None, {
        "data.path": str(model2), "data.augment": "d4", "model.name": "cnn", "model.crop": 48,
        "model.options": {"width": 16, "blocks": 3}, "training.epochs": 12,
        "training.batch_size": 32, "training.learning_rate": 2e-3,
        "training.early_stopping_patience": None,
    })
    run = train(config, tmp_path / "run", progress=False)
    paths = exporter.export_run(run.path, tmp_path / "serving", on_device=True, train_batch_size=16,
                                progress=False)

    runtime = tflite_lib.interpreter(paths["on_device"], num_threads=2)
    infer, step = runtime.get_signature_runner("infer"), runtime.get_signature_runner("train")
    train3 = load_examples(model3, split="train")
    test3 = load_examples(model3, split="test")

    def held_out():
        outputs = infer(image=test3.images)
        truth = test3.targets[TARGET]
        return float(np.mean(np.abs(outputs[TARGET] - truth))), _mean_nll(outputs, truth)

    mae_before, nll_before = held_out()
    rng = np.random.default_rng(0)
    losses = []
    for _epoch in range(20):
        order = rng.permutation(len(train3.images))
        for start in range(0, len(order) - 15, 16):
            batch = order[start:start + 16]
            result = step(image=train3.images[batch], learning_rate=np.float32(3e-3),
                          **{TARGET: train3.targets[TARGET][batch].astype(np.float32)})
            losses.append(float(result["loss"]))
    mae_after, nll_after = held_out()
    per_epoch = len(losses) // 20
    first, last = np.mean(losses[:per_epoch]), np.mean(losses[-per_epoch:])
    print(f"\nmodel-3 held-out: MAE {mae_before:.3f} -> {mae_after:.3f} dex, "
          f"NLL {nll_before:.3f} -> {nll_after:.3f}; train loss {first:.3f} -> {last:.3f} "
          f"({len(train3.images)} train / {len(test3.images)} held-out images)")
    assert last < first
    assert nll_after < nll_before
    assert mae_after <= mae_before

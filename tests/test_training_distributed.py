"""Two workers on 127.0.0.1 train one model with MultiWorkerMirroredStrategy (TF_CONFIG).

Each worker is its own process (a MultiWorkerMirroredStrategy must be created before
TensorFlow runs anything), running the same `train()` call; they must end with identical
weights, and the loss must fall. About a minute on two CPU cores.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import write_dataset

WORKER = r"""
import sys
import numpy as np
import pytest
from deeplense_tf.training import load_config, train

data, out, weights_path = sys.argv[1:4]
config = load_config(overrides={
    "data.path": data, "data.targets": ["theta_e_arcsec", "source_x_arcsec"],
    "model.name": "cnn", "model.normalization": "none", "model.crop": None,
    "model.options": {"width": 4, "blocks": 2, "convs_per_block": 1},
    "training.strategy": "multi_worker", "training.epochs": 3, "training.batch_size": 8,
    "training.learning_rate": 3e-3, "training.bn_recalibration_batches": 2,
})
run = train(config, out, progress=False)
np.save(weights_path, np.concatenate([np.ravel(w) for w in run.model.get_weights()]))
print("worker done", run.path)
"""


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_two_workers_train_to_identical_weights(tmp_path):
    data = write_dataset(tmp_path / "data", counts={"train": 64, "val": 16, "test": 8})
    out = tmp_path / "run"
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    root = Path(__file__).resolve().parents[1]
    procs = []
    for index in range(2):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(data), str(out), str(tmp_path / f"weights{index}.npy")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        ))
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=300)[0])
    finally:
        for proc in procs:  # a worker left alone waits for its peer forever
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-3000:]
        assert "worker done" in log
    assert "2 replica(s)" in logs[0]  # the chief reports the cluster it trained with
    assert "worker done None" in logs[1]  # the other worker writes no run folder

    chief, other = np.load(tmp_path / "weights0.npy"), np.load(tmp_path / "weights1.npy")
    np.testing.assert_array_equal(chief, other)
    with open(out / "history.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert json.loads((out / "metrics.json").read_text())["replicas"] == 2


MIRRORED = r"""
import sys
import tensorflow as tf

# Two logical CPU devices stand in for two GPUs (must be set before TensorFlow starts).
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from deeplense_tf.training import load_config, strategy, train

strategy._STRATEGY_CACHE["mirrored"] = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
data, out = sys.argv[1:3]
config = load_config(overrides={
    "data.path": data, "data.targets": ["theta_e_arcsec"],
    "model.name": "cnn", "model.normalization": "none", "model.crop": None,
    "model.options": {"width": 4, "blocks": 2, "convs_per_block": 1},
    "training.strategy": "mirrored", "training.epochs": 2, "training.batch_size": 8,
    "training.bn_recalibration_batches": 2,
})
run = train(config, out, progress=False)
print("replicas", run.path, flush=True)
"""


@pytest.mark.slow
def test_mirrored_strategy_over_two_local_devices(tmp_path):
    """Two replicas in one process: BatchNorm updates in replica context, statistics synced."""
    data = write_dataset(tmp_path / "data", counts={"train": 32, "val": 8, "test": 8})
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED, str(data), str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "2 replica(s)" in result.stdout
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["replicas"] == 2

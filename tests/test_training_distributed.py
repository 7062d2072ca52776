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
from data_fixtures import write_dataset

WORKER = r"""
import sys
import numpy as np
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

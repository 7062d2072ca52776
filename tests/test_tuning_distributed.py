"""Distributed tuning: tuning/launch_distributed.sh starts two workers and a chief on
127.0.0.1 (a free port) with the tiny space; the trials are shared between the workers
(each trial folder records the tuner that ran it) and the chief writes the results.

Three processes each import TensorFlow: about 30 s of CPU in all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from data_fixtures import write_dataset

from deeplense_tf.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tuning" / "launch_distributed.sh"
TARGET = "theta_e_arcsec"


def _env():
    env = dict(os.environ)
    env.update(PYTHON=sys.executable, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return env


def test_dry_run_prints_one_command_per_process(tmp_path):
    out = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--workers", "3", "--port", "7001", "--",
         "--data", "D", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=_env(), check=True,
    ).stdout.strip().splitlines()
    ids = [line.split()[0] for line in out]
    assert ids == [f"KERASTUNER_TUNER_ID={i}" for i in ("tuner0", "tuner1", "tuner2", "chief")]
    assert all("KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=7001" in line for line in out)
    assert all(line.endswith(f"-m deeplense_tf tune --data D --out {tmp_path / 'o'}") for line in out)
    bad = subprocess.run(["bash", str(SCRIPT), "--role", "worker", "--port", "1", "--", "--out", "x"],
                         capture_output=True, text=True, env=_env())
    assert bad.returncode == 2 and "--role worker needs --id" in bad.stderr


def test_chief_and_two_workers_share_the_trials(tmp_path):
    data = write_dataset(tmp_path / "data", counts={"train": 24, "val": 8, "test": 4})
    out = tmp_path / "search"
    command = ["bash", str(SCRIPT), "--workers", "2", "--",
               "--data", str(data), "--out", str(out), "--space", str(ROOT / "tuning" / "tiny.yaml"),
               "--max-trials", "2", "--set", f"data.targets=[{TARGET}]"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    except subprocess.TimeoutExpired as err:  # the script stops its processes when killed
        pytest.fail(f"distributed search did not finish: {err.stdout}")
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((out / "launch-logs").glob("*.log")))
    assert done.returncode == 0, done.stdout + done.stderr + logs

    table = pd.read_csv(out / "results.csv")
    assert len(table) == 2 and set(table["status"]) == {"COMPLETED"}
    # The workers share one oracle: each trial ran once, on one of them. Which worker gets
    # which trial is a race (a tiny trial takes a second; one worker may take both).
    assert table["trial_id"].nunique() == 2, logs
    assert set(table["tuner_id"]) <= {"tuner0", "tuner1"}, logs
    for worker in ("tuner0", "tuner1"):
        assert "no trials left" in (out / "launch-logs" / f"{worker}.log").read_text()
    chief_log = (out / "launch-logs" / "chief.log").read_text()
    assert "oracle listening on 127.0.0.1:" in chief_log and "2 new trials, 2 in all" in chief_log
    config = load_config(out / "best_config.yaml")
    assert config["model"]["options"]["width"] in (2, 4, 8)

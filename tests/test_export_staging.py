"""Staging folders of killed exports: the next export removes its host's stale ones and
reports the ones it cannot judge (issue 14, item 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from data_fixtures import write_dataset
from test_export import make_run

from deeplense_tf.export import exporter


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    data = write_dataset(tmp_path_factory.mktemp("data") / "blobs",
                         counts={"train": 24, "val": 6, "test": 12})
    return make_run(tmp_path_factory.mktemp("runs") / "cnn", data)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_export_killed_mid_way_is_cleaned_by_the_next(run_dir, tmp_path, capsys):
    out = tmp_path / "serving"
    model_dir = out / "deeplense"
    export = subprocess.Popen(
        [sys.executable, "-m", "deeplense_tf", "export", "--run", str(run_dir), "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not list(model_dir.glob(".tmp-export-*")):
            assert export.poll() is None, "the export finished before it could be killed"
            assert time.monotonic() < deadline, "no staging folder appeared"
            time.sleep(0.02)
        export.send_signal(signal.SIGKILL)
    finally:
        export.kill()
        export.wait()
    [stale] = model_dir.glob(".tmp-export-*")
    assert stale.name.startswith(f".tmp-export-1-{exporter._HOST}-{export.pid}-")

    # Folders the next export must not touch: a live export's, another host's, an old name.
    live = model_dir / f".tmp-export-7-{exporter._HOST}-{os.getpid()}-abc"
    foreign = model_dir / ".tmp-export-8-node-b.cluster-4242-def"
    legacy = model_dir / ".tmp-export-9-k3j_x1yz"
    for path in (live, foreign, legacy):
        path.mkdir()
    paths = exporter.export_run(run_dir, out, progress=False)
    assert paths["version_dir"] == model_dir / "1" and (model_dir / "1" / "saved_model.pb").is_file()
    assert not stale.exists()
    assert live.is_dir() and foreign.is_dir() and legacy.is_dir()
    err = capsys.readouterr().err
    assert f"removed {stale}" in err
    assert all(f"kept {p}" in err for p in (live, foreign, legacy))
    assert "export process 4242 on node-b.cluster" in err


def test_clean_stale_staging_judges_by_host_and_process(tmp_path):
    dead = tmp_path / f".tmp-export-2-{exporter._HOST}-{_dead_pid()}-x1"
    mine = tmp_path / f".tmp-export-3-{exporter._HOST}-{os.getpid()}-x2"
    (dead / "variables").mkdir(parents=True)
    (dead / "variables" / "v.data").write_bytes(b"0" * 100)
    mine.mkdir()
    (tmp_path / "1").mkdir()  # a published version is never a candidate
    result = exporter.clean_stale_staging(tmp_path, report=False)
    assert result == {"removed": [dead], "kept": [mine]}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["1", mine.name])

"""The data checks as a user meets them: `deeplense evaluate` on a damaged data set exits
non-zero with one line naming the problem (issue 14: a test split cut to 20 of its 40
records at a record boundary used to be evaluated on the 20, exit 0)."""

from __future__ import annotations

import json

import pytest
import yaml
from data_fixtures import SIZE, write_dataset

from deeplense_tf.cli import main

TARGET = "log10_m_axion_ev"


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    """A tiny gaussian-head run folder (the files `Run.load` reads) and a 40-record test split."""
    import keras

    from deeplense_tf.models import build_model

    root = tmp_path_factory.mktemp("datacli")
    keras.utils.set_random_seed(0)
    shape = (SIZE, SIZE, 1)
    model = build_model(
        "cnn", shape, [TARGET], head="gaussian", width=4, blocks=2, convs_per_block=1
    )
    run = root / "run"
    run.mkdir()
    model.save(run / "model.keras")
    data = write_dataset(root / "data", counts={"train": 6, "val": 3, "test": 40})
    config = {"seed": 0, "data": {"path": str(data)}, "model": {"name": "cnn", "head": "gaussian"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "target_stats.json").write_text(json.dumps({TARGET: {"mean": -23.0, "std": 0.58}}))
    run_info = {
        "format_version": 1,
        "deeplense_tf": "0.1.0",
        "model": "cnn",
        "head": "gaussian",
        "targets": [TARGET],
        "input_shape": list(shape),
        "complete": True,
    }
    (run / "run.json").write_text(json.dumps(run_info))
    return run, data


def _copy_with_test_records(data, destination, keep: int, extra_bytes: int = 0):
    import shutil

    import tensorflow as tf

    shutil.copytree(data, destination)
    shard = destination / "test-00000-of-00001.tfrecord"
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(shard))]
    original = shard.read_bytes()
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for record in records[:keep]:
            writer.write(record)
    if extra_bytes:
        kept = shard.read_bytes()
        shard.write_bytes(kept + original[len(kept) : len(kept) + extra_bytes])
    return destination, shard


def _evaluate(run, data, out, capsys):
    code = main(["evaluate", "--run", str(run), "--data", str(data), "--out", str(out)])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


def test_evaluate_on_the_whole_split_works(run_and_data, tmp_path, capsys):
    run, data = run_and_data
    code, _ = _evaluate(run, data, tmp_path / "eval", capsys)
    assert code == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # 40 records; the mass is defined for the axion class only (every third example)
    assert (metrics["examples"], metrics["skipped_undefined"]) == (13, 27)


def test_evaluate_on_a_split_cut_at_a_record_boundary_fails(run_and_data, tmp_path, capsys):
    run, data = run_and_data
    copy, _ = _copy_with_test_records(data, tmp_path / "cut", keep=20)
    code, lines = _evaluate(run, copy, tmp_path / "eval", capsys)
    assert code != 0
    assert len(lines) == 1, lines
    assert "split 'test' has 20 records in its shards but the manifest says 40" in lines[0]
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_evaluate_on_a_split_cut_inside_a_record_names_the_shard(run_and_data, tmp_path, capsys):
    run, data = run_and_data
    copy, shard = _copy_with_test_records(data, tmp_path / "cut", keep=20, extra_bytes=50)
    code, lines = _evaluate(run, copy, tmp_path / "eval", capsys)
    assert code != 0
    assert len(lines) == 1, lines
    assert str(shard) in lines[0] and "corrupt or truncated shard" in lines[0]

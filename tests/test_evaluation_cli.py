"""`deeplense evaluate` and `deeplense predict` end to end on a tiny run folder.

The run folder is written here from a freshly built tiny model (exactly the files
`Run.load` reads), so these tests take seconds; the quickstart smoke test runs the same
commands on a run made by the real `train`.
"""

import csv
import json

import numpy as np
import pytest
import yaml

from deeplense_tf.cli import main

TARGET = "log10_m_axion_ev"
SHAPE = (16, 16, 1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A gaussian-head run folder (8-filter CNN on 16x16 images) and an .npz data set."""
    import keras

    from deeplense_tf.models import build_model

    root = tmp_path_factory.mktemp("evalcli")
    keras.utils.set_random_seed(0)
    model = build_model("cnn", SHAPE, [TARGET], head="gaussian", normalization="peak_asinh",
                        width=4, blocks=2, convs_per_block=1)
    run = root / "run"
    run.mkdir()
    model.save(run / "model.keras")
    rng = np.random.default_rng(0)
    images = rng.gamma(2.0, 0.1, size=(24, *SHAPE)).astype(np.float32)
    truth = rng.uniform(-24, -22, 24).astype(np.float32)
    data = root / "data.npz"
    np.savez(data, images=images, **{TARGET: truth})
    config = {"seed": 0, "data": {"path": str(data)}, "model": {"name": "cnn", "head": "gaussian"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "target_stats.json").write_text(json.dumps({TARGET: {"mean": -23.0, "std": 0.58}}))
    (run / "run.json").write_text(json.dumps({
        "format_version": 1, "deeplense_tf": "0.1.0", "model": "cnn", "head": "gaussian",
        "targets": [TARGET], "input_shape": list(SHAPE), "complete": True,
    }))
    return {"run": run, "data": data, "images": images, "truth": truth, "root": root}


def test_evaluate_writes_metrics_and_plots(tiny_run, capsys):
    assert main(["evaluate", "--run", str(tiny_run["run"]), "--bins", "4"]) == 0  # default data
    out = capsys.readouterr().out
    assert "MAE" in out and "metrics.json" in out
    eval_dir = tiny_run["run"] / "eval"
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    result = metrics["targets"][TARGET]
    assert metrics["examples"] == 24 and metrics["head"] == "gaussian" and not metrics["tta"]
    assert len(result["binned"]) == 4 and sum(b["count"] for b in result["binned"]) == 24
    # The stored metrics agree with the stored predictions.
    with open(eval_dir / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    err = [abs(float(r["mean"]) - float(r["true"])) for r in rows]
    assert result["overall"]["mae"] == pytest.approx(np.mean(err), rel=1e-4)
    assert 0.0 <= result["overall"]["coverage_68"] <= result["overall"]["coverage_95"] <= 1.0
    assert (eval_dir / "plots" / f"{TARGET}.png").stat().st_size > 20_000


def test_evaluate_tta_to_another_folder(tiny_run, tmp_path, capsys):
    out = tmp_path / "tta"
    code = main(["evaluate", "--run", str(tiny_run["run"]), "--data", str(tiny_run["data"]),
                 "--tta", "--limit", "10", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tta"] and metrics["examples"] == 10


def test_predict_csv_json_and_single_images(tiny_run, tmp_path, capsys):
    from deeplense_tf.runs import Run

    single = tmp_path / "one.npy"
    np.save(single, tiny_run["images"][3, :, :, 0])  # [H, W]
    expected = Run.load(tiny_run["run"]).predict(tiny_run["images"])[TARGET]

    out_csv = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(tiny_run["run"]), str(tiny_run["data"]), str(single),
                 "--out", str(out_csv)]) == 0
    with open(out_csv) as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["source", "index", TARGET, f"{TARGET}_std"]
    assert len(rows) == 25 and rows[-1]["source"] == str(single) and rows[-1]["index"] == "0"
    got = np.array([float(r[TARGET]) for r in rows])
    assert np.allclose(got[:24], expected["mean"], atol=1e-4)
    assert got[24] == pytest.approx(expected["mean"][3], abs=1e-4)
    assert np.allclose([float(r[f"{TARGET}_std"]) for r in rows[:24]], expected["std"], rtol=1e-4)
    assert f"wrote {out_csv}" in capsys.readouterr().out

    assert main(["predict", "--run", str(tiny_run["run"]), str(single), "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed[0]["source"] == str(single) and printed[0][f"{TARGET}_std"] > 0


def _one_line_error(capsys, argv):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    return err[0]


def test_bad_inputs_are_one_line_errors_naming_the_file(tiny_run, tmp_path, capsys):
    run = str(tiny_run["run"])
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([np.zeros((16, 16)), 1.0], dtype=object), allow_pickle=True)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((8, 8), np.float32))
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((16, 16), np.nan, np.float32))
    batch = tmp_path / "batch.npy"
    np.save(batch, np.zeros((3, 16, 16), np.float32))
    other = tmp_path / "other.npz"
    np.savez(other, images=np.zeros((4, 16, 16), np.float32), theta_e_arcsec=np.zeros(4))
    small = tmp_path / "small.npz"
    np.savez(small, images=np.zeros((4, 8, 8), np.float32), **{TARGET: np.zeros(4)})

    for path, message in [
        (pickled, "pickled object array"),
        (wrong, "(8, 8, 1)"),
        (nan, "NaN"),
        (batch, "[H, W] or [H, W, 1]"),
        (tmp_path / "missing.npy", "no such file"),
    ]:
        line = _one_line_error(capsys, ["predict", "--run", run, str(path)])
        assert str(path) in line and message in line, line

    line = _one_line_error(capsys, ["evaluate", "--run", run, "--data", str(other), "--out", str(tmp_path / "e")])
    assert str(other) in line and f"no target {TARGET}" in line
    line = _one_line_error(capsys, ["evaluate", "--run", run, "--data", str(small), "--out", str(tmp_path / "e")])
    assert str(small) in line and "(8, 8, 1)" in line
    line = _one_line_error(capsys, ["predict", "--run", run, str(tiny_run["data"]), "--out", str(tmp_path / "p.txt")])
    assert "p.txt" in line and ".json" in line
    line = _one_line_error(capsys, ["evaluate", "--run", run, "--bins", "0"])
    assert "--bins" in line
    line = _one_line_error(capsys, ["evaluate", "--run", str(tmp_path / "norun")])
    assert "norun" in line


def test_run_from_another_version_is_refused(tiny_run, tmp_path, capsys):
    import shutil

    old = tmp_path / "old_run"
    shutil.copytree(tiny_run["run"], old)
    info = json.loads((old / "run.json").read_text())
    (old / "run.json").write_text(json.dumps(dict(info, format_version=99, deeplense_tf="9.9")))
    for argv in (["evaluate", "--run", str(old)], ["predict", "--run", str(old), str(tiny_run["data"])]):
        line = _one_line_error(capsys, argv)
        assert str(old) in line and "format_version 99" in line

"""A Student-t run end to end on a tiny folder: evaluate (with and without TTA),
calibrate --tta, and infer-population, through the real command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from deeplense_tf.cli import main

TARGET = "log10_m_axion_ev"
SHAPE = (16, 16, 1)


@pytest.fixture(scope="module")
def t_run(tmp_path_factory):
    import keras

    from deeplense_tf.models import build_model

    root = tmp_path_factory.mktemp("tcli")
    keras.utils.set_random_seed(0)
    model = build_model("cnn", SHAPE, [TARGET], head="student_t", normalization="peak_asinh",
                        width=4, blocks=2, convs_per_block=1)
    run = root / "run"
    run.mkdir()
    model.save(run / "model.keras")
    rng = np.random.default_rng(0)
    images = rng.gamma(2.0, 0.1, size=(40, *SHAPE)).astype(np.float32)
    data = root / "data.npz"
    np.savez(data, images=images, **{TARGET: rng.uniform(-24, -22, 40).astype(np.float32)})
    shared = root / "shared.npz"  # every lens has the same mass
    np.savez(shared, images=images[:20], **{TARGET: np.full(20, -23.2, np.float32)})
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"seed": 0, "data": {"path": str(data)}, "model": {"name": "cnn", "head": "student_t"}}))
    (run / "target_stats.json").write_text(json.dumps({TARGET: {"mean": -23.0, "std": 0.58}}))
    (run / "data_manifest.json").write_text(json.dumps({"preset": "deeplense-model-2"}))
    (run / "run.json").write_text(json.dumps({
        "format_version": 1, "deeplense_tf": "0.1.0", "model": "cnn", "head": "student_t",
        "targets": [TARGET], "input_shape": list(SHAPE), "complete": True,
    }))
    return {"run": run, "data": data, "shared": shared, "root": root}


@pytest.mark.parametrize("tta", [False, True])
def test_evaluate_reports_the_student_t_coverage_curve(t_run, tta, capsys):
    out = t_run["root"] / f"eval-{tta}"
    argv = ["evaluate", "--run", str(t_run["run"]), "--data", str(t_run["data"]), "--out", str(out)]
    assert main(argv + (["--tta"] if tta else [])) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distribution"][TARGET] == {"family": "student_t", "components": 8 if tta else 1}
    curve = metrics["targets"][TARGET]["calibration"]
    assert len(curve["expected"]) >= 19 and 0.0 <= curve["max_deviation"] <= 1.0
    assert (out / "plots" / f"{TARGET}_coverage.png").is_file()
    assert "max gap" in capsys.readouterr().out


def test_calibrate_tta_fits_the_mixture_and_records_it(t_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(t_run["run"], run)
    assert main(["calibrate", "--run", str(run), "--data", str(t_run["data"]), "--tta"]) == 0
    record = json.loads((run / "metrics.json").read_text())["variance_calibration"]
    fit = record["targets"][TARGET]
    assert record["tta"] is True and fit["components"] == 8 and fit["family"] == "student_t"
    assert fit["calibration_error_after"] <= fit["calibration_error_before"]


def test_infer_population_writes_the_combined_posterior(t_run, capsys):
    out = t_run["root"] / "population"
    argv = ["infer-population", "--run", str(t_run["run"]), "--data", str(t_run["shared"]),
            "--out", str(out), "--grid", "401"]
    assert main(argv) == 0
    result = json.loads((out / "population.json").read_text())
    assert result["lenses"] == 20 and result["prior"]["range"] == [-24.0, -22.0]
    assert result["prior"]["source"] == "uniform, preset deeplense-model-2"
    post = result["posterior"]
    assert -24.0 <= post["interval_95"][0] <= post["mean"] <= post["interval_95"][1] <= -22.0
    assert result["truth"]["shared"] is True
    assert [row["n"] for row in result["narrowing"]] == [1, 2, 4, 8, 16, 20]
    assert (out / "population.png").read_bytes().startswith(b"\x89PNG")
    assert "shared by 20 lenses" in capsys.readouterr().out


def test_infer_population_bad_input_is_one_line(t_run, capsys):
    argv = ["infer-population", "--run", str(t_run["run"]), "--data", str(t_run["shared"]),
            "--prior-range", "-22", "-24"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lo < hi" in err[0]


def test_infer_population_with_a_systematic_floor(t_run, capsys):
    out = t_run["root"] / "population-floor"
    base = ["infer-population", "--run", str(t_run["run"]), "--data", str(t_run["shared"]), "--grid", "401"]
    assert main(base + ["--out", str(out), "--systematic", "0.05", "--no-edge-correction"]) == 0
    result = json.loads((out / "population.json").read_text())
    assert result["systematic_std"] == 0.05 and result["edge_correction"] is False
    assert result["posterior"]["std"] > 0.05 * 0.9
    assert main(base + ["--systematic", "lots"]) == 1
    assert "--systematic must be a number" in capsys.readouterr().err


def test_predict_writes_std_and_df(t_run, tmp_path):
    import csv

    out = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(t_run["run"]), "--data", str(t_run["shared"]), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 20
    assert float(rows[0][f"{TARGET}_std"]) > 0 and float(rows[0][f"{TARGET}_df"]) > 2


def test_infer_population_with_the_calibrated_likelihood(t_run):
    out = t_run["root"] / "population-calibrated"
    argv = ["infer-population", "--run", str(t_run["run"]), "--data", str(t_run["shared"]), "--grid", "401",
            "--out", str(out), "--likelihood", "calibrated"]
    assert main(argv) == 0
    result = json.loads((out / "population.json").read_text())
    assert result["method"] == "calibrated likelihood" and result["likelihood"]["examples"] == 40
    assert -24.0 <= result["posterior"]["hdi_95"][0] <= result["posterior"]["hdi_95"][1] <= -22.0


def test_infer_population_with_the_simulated_likelihood(t_run, capsys):
    rng = np.random.default_rng(1)
    masses = np.repeat([-24.1, -23.5, -23.0, -22.5, -21.9], 60)
    calibration = t_run["root"] / "calibration.npz"  # lenses at fixed masses
    np.savez(calibration, images=rng.gamma(2.0, 0.1, size=(masses.size, *SHAPE)).astype(np.float32),
             **{TARGET: masses.astype(np.float32)})
    out = t_run["root"] / "population-simulated"
    base = ["infer-population", "--run", str(t_run["run"]), "--data", str(t_run["shared"]), "--grid", "401",
            "--out", str(out), "--likelihood", "simulated"]
    assert main(base + ["--calibration", str(calibration)]) == 0
    result = json.loads((out / "population.json").read_text())
    assert result["method"] == "simulated likelihood"
    assert result["likelihood"]["masses"] == pytest.approx([-24.1, -23.5, -23.0, -22.5, -21.9])
    assert result["likelihood"]["examples"] == 300 and result["systematic_std"] == 0.0
    assert -24.0 <= result["posterior"]["hdi_95"][0] <= result["posterior"]["hdi_95"][1] <= -22.0
    capsys.readouterr()
    assert main(base) == 1  # no calibration set named
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--calibration" in err


def test_a_calibration_set_is_simulated_at_fixed_masses(tmp_path):
    from deeplense_tf.data import load_examples
    from deeplense_tf.evaluation.population import simulate_calibration_set

    path = simulate_calibration_set("deeplense-model-2", tmp_path / "calibration.npz", masses=[-24.1, -22.0],
                                    per_mass=2, seed=4)
    examples = load_examples(str(path))
    assert examples.images.shape == (4, 64, 64, 1)
    np.testing.assert_allclose(examples.targets[TARGET], [-24.1, -24.1, -22.0, -22.0])


def test_export_carries_std_and_df_equal_to_keras(t_run, tmp_path):
    out = tmp_path / "export"
    assert main(["export", "--run", str(t_run["run"]), "--out", str(out), "--tflite", "fp32"]) == 0
    report = json.loads(next(out.glob("*/1/export.json")).read_text())
    outputs = report["signatures"]["serving_default"]["outputs"]
    assert set(outputs) == {TARGET, f"{TARGET}_std", f"{TARGET}_df"}
    for check in (report["checks"]["saved_model"], report["checks"]["tflite"]["fp32"]):
        assert check["max_scaled_diff"][f"{TARGET}_df"] < check["tolerance"]
        assert check["max_scaled_diff"][f"{TARGET}_std"] < check["tolerance"]

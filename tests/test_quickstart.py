"""`deeplense quickstart`: the packaged config resolves, and --smoke runs every step end to
end (simulate, the real `train`, evaluate, export, cluster, report); a second run reuses
everything; evaluate --tta and predict work on the run the real trainer wrote."""

import csv
import json

import pytest

from deeplense_tf.cli import main
from deeplense_tf.errors import ConfigError
from deeplense_tf.quickstart import load_quickstart_config, run_quickstart


def test_quickstart_config_resolves_with_budget(tmp_path):
    config = load_quickstart_config(tmp_path / "data", minutes=3.5, seed=7, smoke=False)
    assert config["data"]["path"] == str(tmp_path / "data")
    assert config["seed"] == 7 and not config["smoke"]
    assert config["training"]["time_budget_minutes"] == 3.5
    assert config["model"]["name"] == "resnet" and config["model"]["head"] == "gaussian"


@pytest.mark.parametrize("kwargs, message", [({"num": 5}, "--num 5"), ({"minutes": 0}, "--minutes"),
                                             ({"workers": 0}, "--workers")])
def test_bad_options_are_config_errors(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        run_quickstart(tmp_path / "qs", **kwargs)


def test_quickstart_smoke_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "report.md") in printed and "test MAE" in printed

    summary = json.loads((out / "quickstart.json").read_text())
    steps = {row["step"]: row["status"] for row in summary["steps"]}
    assert steps == {"simulate": "done", "train": "done", "evaluate": "done", "export": "done",
                     "cluster": "done", "report": "done"}
    metrics = json.loads((out / "run" / "eval" / "metrics.json").read_text())
    mae = metrics["targets"]["log10_m_axion_ev"]["overall"]["mae"]
    assert summary["mae"]["log10_m_axion_ev"] == pytest.approx(mae)
    assert metrics["examples"] == 3  # the smoke set's test split

    report = (out / "report.md").read_text()
    assert f"test MAE {mae:.3f} dex" in report and "≤ 0.15 dex" in report
    assert "| log10_m_axion_ev | 3 |" in report  # the overall metrics row
    assert "(run/eval/plots/log10_m_axion_ev.png)" in report
    assert (out / "run" / "eval" / "plots" / "log10_m_axion_ev.png").is_file()
    assert list((out / "export" / "deeplense").glob("*/saved_model.pb"))
    assert (out / "cluster" / "summary.json").is_file()
    assert "deeplense predict --run" in report

    # Re-running reuses every finished step.
    again = run_quickstart(out, smoke=True)
    assert {row["step"]: row["status"] for row in again["steps"]} == {
        "simulate": "reused", "train": "reused", "evaluate": "reused", "export": "reused",
        "cluster": "reused", "report": "done"}
    assert again["mae"] == summary["mae"]

    # The run the real trainer wrote works with evaluate --tta and predict.
    run = str(out / "run")
    assert main(["evaluate", "--run", run, "--tta", "--split", "val", "--out", str(tmp_path / "tta")]) == 0
    tta = json.loads((tmp_path / "tta" / "metrics.json").read_text())
    assert tta["tta"] and tta["examples"] == 3 and tta["split"] == "val"
    assert main(["predict", "--run", run, str(out / "data"), "--out", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and float(rows[0]["log10_m_axion_ev_std"]) > 0


def test_missing_export_and_cluster_are_skipped_with_a_note(tmp_path, monkeypatch):
    import deeplense_tf.quickstart as qs

    monkeypatch.setattr(qs, "_entry_point", lambda module, name: None)
    summary, status = qs.export_step(tmp_path / "run", tmp_path / "export", smoke=True)
    assert summary is None and status.startswith("skipped") and "export_run" in status
    summary, status = qs.cluster_step(tmp_path / "run", tmp_path / "data", tmp_path / "c", smoke=True)
    assert summary is None and status.startswith("skipped") and "cluster_run" in status

    metrics = {"head": "point", "examples": 4, "targets": {"log10_m_axion_ev": {
        "overall": {"count": 4, "mae": 0.12, "rmse": 0.2, "r2": 0.9, "bias": 0.0, "median_ae": 0.1},
        "baseline_mae": 0.5, "binned": []}}}
    steps = [{"step": "simulate", "status": "reused", "seconds": 0.5, "work_seconds": 100.0, "detail": ""},
             {"step": "train", "status": "done", "seconds": 200.0, "work_seconds": 200.0, "detail": ""}]
    path = qs.write_report(tmp_path, manifest={"preset": "deeplense-model-2"}, config={}, metrics=metrics,
                           steps=steps, export_summary=None, export_status=status.replace("cluster", "export"),
                           cluster_summary=None, cluster_status=status, smoke=False, wall_seconds=200.5)
    report = path.read_text()
    assert "test MAE 0.120 dex** — meets" in report
    assert "Total time of the steps when they ran: 5.0 min" in report  # 100 s earlier + 200 s now
    assert "- Clustering: skipped" in report and "- Export (SavedModel for TF Serving, TFLite): skipped" in report

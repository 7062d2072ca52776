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
    # The best architecture we have (BENCHMARKS.md), over the polar view.
    assert config["model"]["name"] == "cnn_lstm" and config["model"]["head"] == "gaussian"
    assert config["model"]["options"]["view"] == "polar"


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
    assert f"test MAE {mae:.3f} dex" in report and "≤ 0.05 dex" in report
    assert "| log10_m_axion_ev | 3 |" in report  # the overall metrics row
    assert "(run/eval/plots/log10_m_axion_ev.png)" in report
    # The uncertainties next to the accuracy: the coverage curve evaluate measured.
    assert "### Are the uncertainties right?" in report and "| observed |" in report
    assert "misses the aim" not in report  # a smoke run says nothing about the machine
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
    assert main(["predict", "--run", run, "--data", str(out / "data"), "--out", str(tmp_path / "p.csv")]) == 0
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
        "overall": {"count": 4, "mae": 0.045, "rmse": 0.2, "r2": 0.9, "bias": 0.0, "median_ae": 0.1},
        "baseline_mae": 0.5, "binned": []}}}
    steps = [{"step": "simulate", "status": "reused", "seconds": 0.5, "work_seconds": 100.0, "detail": ""},
             {"step": "train", "status": "done", "seconds": 200.0, "work_seconds": 200.0, "detail": ""}]
    path = qs.write_report(tmp_path, manifest={"preset": "deeplense-model-2"}, config={}, metrics=metrics,
                           steps=steps, export_summary=None, export_status=status.replace("cluster", "export"),
                           cluster_summary=None, cluster_status=status, smoke=False, wall_seconds=200.5)
    report = path.read_text()
    assert "test MAE 0.045 dex** — meets" in report
    assert "Total time of the steps when they ran: 5.0 min" in report  # 100 s earlier + 200 s now
    assert "- Clustering: skipped" in report and "- Export (SavedModel for TF Serving, TFLite): skipped" in report


def test_busy_line_says_how_loaded_the_machine_was_when_the_result_is_worse():
    from deeplense_tf.quickstart import AIM_MAE_DEX, busy_line

    train = [{"step": "simulate", "load": 9.0}, {"step": "train", "load": 7.4}]
    assert busy_line(AIM_MAE_DEX - 0.01, train, cores=2) is None  # met the aim: no line
    line = busy_line(0.071, train, cores=2)
    assert line.startswith("test MAE 0.071 dex misses the aim")
    assert "load average 7.4 on 2 cores (3.7 per core)" in line and "\n" not in line
    quiet = busy_line(0.071, [{"step": "train", "load": 2.1}], cores=2)
    assert "not busy (load average 2.1 on 2 cores)" in quiet
    assert busy_line(0.071, [{"step": "train", "load": None}], cores=2) is None


def test_shared_cpu_note_ignores_the_simulation_workers_own_load(monkeypatch):
    from deeplense_tf import quickstart

    monkeypatch.setattr(quickstart.os, "cpu_count", lambda: 2)
    # An idle 2-core machine: the simulate step's two workers and parent read 3.15.
    idle = [{"step": "simulate", "load": 3.15, "work_seconds": 44},
            {"step": "train", "load": 2.74, "work_seconds": 241}]
    assert quickstart._load_note(idle) == ""
    shared = [{"step": "simulate", "load": 9.0, "work_seconds": 80},
              {"step": "train", "load": 7.4, "work_seconds": 241}]
    assert "other processes shared the CPU (load average up to 7.4" in quickstart._load_note(shared)


def test_report_shows_the_coverage_curve_next_to_the_accuracy(tmp_path):
    import deeplense_tf.quickstart as qs

    levels = [round(0.05 * i, 2) for i in range(1, 20)] + [0.99]
    observed = [min(1.0, level + 0.02) for level in levels]
    metrics = {"head": "gaussian", "examples": 4,
               "plots": {"log10_m_axion_ev": "plots/m.png",
                         "log10_m_axion_ev_coverage": "plots/m_coverage.png"},
               "targets": {"log10_m_axion_ev": {
                   "overall": {"count": 4, "mae": 0.09, "rmse": 0.1, "r2": 0.9, "bias": 0.0,
                               "median_ae": 0.1, "coverage_68": 0.7, "coverage_95": 0.97},
                   "baseline_mae": 0.5, "binned": [],
                   "calibration": {"expected": levels, "observed": observed, "max_deviation": 0.02,
                                   "coverage_68": 0.7, "coverage_95": 0.97}}}}
    steps = [{"step": "train", "status": "done", "seconds": 200.0, "work_seconds": 200.0,
              "load": 9.5, "detail": ""}]
    report = qs.write_report(tmp_path, manifest={}, config={}, metrics=metrics, steps=steps,
                             export_summary=None, export_status="skipped", cluster_summary=None,
                             cluster_status="skipped", smoke=False, wall_seconds=200).read_text()
    result, curve = report.index("## Result"), report.index("### Are the uncertainties right?")
    assert result < curve < report.index("## Plots")  # next to the accuracy
    assert "| observed | 0.070 | 0.120 |" in report  # evaluate's curve, level by level
    assert report.count("(run/eval/plots/m_coverage.png)") == 1  # its figure, once
    assert "(run/eval/plots/m.png)" in report
    assert "the machine was busy while training: load average 9.5" in report

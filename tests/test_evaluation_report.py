"""Evaluation reports and plots with a stand-in run (no trained model needed)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from deeplense_tf.errors import DataError
from deeplense_tf.evaluation.plots import axis_label, plot_target
from deeplense_tf.evaluation.report import (
    check_fits,
    coverage_markdown,
    evaluate_run,
    format_table,
    markdown_table,
    write_evaluation,
)

TARGET = "log10_m_axion_ev"


class FakeRun:
    """Predicts each image's mean pixel as the target; records how it was called."""

    def __init__(self, head="gaussian", shape=(8, 8, 1)):
        self.targets = [TARGET]
        self.head = head
        self.input_shape = shape
        self.calls = []

    def predict(self, images, batch_size=256, tta=False):
        self.calls.append({"n": len(images), "tta": tta})
        mean = images.mean(axis=(1, 2, 3)).astype(np.float64)
        std = np.full(len(images), 0.1) if self.head == "gaussian" else None
        return {TARGET: {"mean": mean, "std": std}}


def _examples(n=40, shape=(8, 8, 1), nan_every=None, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.uniform(-24, -22, n)
    noise = 0.1 * rng.standard_normal(n)
    images = np.broadcast_to((truth + noise)[:, None, None, None], (n, *shape)).astype(np.float32).copy()
    if nan_every:
        truth[::nan_every] = np.nan  # e.g. no_sub images in a mixed set: no axion mass
    return SimpleNamespace(images=images, targets={TARGET: truth}, source="fake.npz",
                           class_id=None, nuisance={}, class_names=None)


def test_axis_labels_carry_units():
    assert axis_label("log10_m_axion_ev") == "log10(m_axion / eV) [dex]"
    assert axis_label("theta_e_arcsec") == "theta_e [arcsec]"
    assert axis_label("e1") == "e1 (dimensionless)"


def test_evaluate_run_skips_undefined_targets_and_matches_metrics():
    run = FakeRun()
    examples = _examples(n=40, nan_every=4)
    metrics, table = evaluate_run(run, examples, tta=True, bins=4)
    assert run.calls == [{"n": 30, "tta": True}]  # the 10 NaN-target images are not predicted
    assert metrics["examples"] == 30 and metrics["skipped_undefined"] == 10 and metrics["tta"]
    result = metrics["targets"][TARGET]
    cols = table[TARGET]
    assert result["overall"]["count"] == 30
    assert result["overall"]["mae"] == pytest.approx(np.mean(np.abs(cols["mean"] - cols["true"])))
    assert len(result["binned"]) == 4 and sum(b["count"] for b in result["binned"]) == 30
    inside = np.abs(cols["mean"] - cols["true"]) <= 0.9945 * 0.1  # quoted std is 0.1
    assert result["overall"]["coverage_68"] == pytest.approx(inside.mean())


def test_write_evaluation_outputs(tmp_path):
    metrics, table = evaluate_run(FakeRun(), _examples(n=50), bins=5)
    written = write_evaluation(metrics, table, tmp_path / "eval")
    names = sorted(p.relative_to(tmp_path / "eval").as_posix() for p in written)
    assert names == ["metrics.json", "plots/log10_m_axion_ev.png", "plots/log10_m_axion_ev_coverage.png",
                     "predictions.csv"]
    png = (tmp_path / "eval" / "plots" / f"{TARGET}.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["targets"][TARGET]["overall"]["mae"] == pytest.approx(
        metrics["targets"][TARGET]["overall"]["mae"])
    assert saved["plots"] == {TARGET: f"plots/{TARGET}.png", f"{TARGET}_coverage": f"plots/{TARGET}_coverage.png"}
    curve = saved["targets"][TARGET]["calibration"]
    assert len(curve["expected"]) >= 19 and curve["max_deviation"] >= 0.0
    lines = (tmp_path / "eval" / "predictions.csv").read_text().splitlines()
    assert lines[0] == "target,true,mean,std" and len(lines) == 51
    assert not list((tmp_path / "eval").glob("*.tmp"))


def test_tables_show_overall_and_binned_rows():
    metrics, _ = evaluate_run(FakeRun(), _examples(n=40), bins=3)
    text = format_table(metrics)
    assert "MAE" in text and "cov68" in text and TARGET in text
    assert text.count("\n[") == 3  # one line per bin
    md = markdown_table(metrics, binned=False)
    assert md.splitlines()[2].startswith("| target | N | MAE")
    point, _ = evaluate_run(FakeRun(head="point"), _examples(n=40), bins=3)
    assert "cov68" not in format_table(point) and "NLL" not in format_table(point)


def test_point_head_plot_has_no_calibration_panel(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 1, 5000)
    # More points than MAX_POINTS: subsampled scatter, still a valid figure.
    gauss = plot_target("theta_e_arcsec", truth, truth + 0.01, np.full(5000, 0.01), tmp_path / "g.png")
    point = plot_target("theta_e_arcsec", truth, truth + 0.01, None, tmp_path / "p.png")
    from matplotlib.image import imread

    wide, narrow = imread(gauss), imread(point)
    assert wide.shape[0] == narrow.shape[0] and wide.shape[1] > 1.4 * narrow.shape[1]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"images": np.zeros((3, 16, 16, 1), np.float32)}, r"shape \(16, 16, 1\).*expects \(8, 8, 1\)"),
        ({"targets": {"theta_e_arcsec": np.zeros(3)}}, "no target log10_m_axion_ev.*theta_e_arcsec"),
        ({"targets": {}}, "no target values"),
        ({"targets": {TARGET: np.full(3, np.nan)}}, "no example has a value"),
    ],
)
def test_bad_data_raises_data_error_naming_the_source(change, message):
    examples = _examples(n=3)
    for key, value in change.items():
        setattr(examples, key, value)
    with pytest.raises(DataError, match=message) as info:
        check_fits(FakeRun(), examples)
        evaluate_run(FakeRun(), examples)
    assert str(info.value).startswith("fake.npz: ")


def test_nan_pixels_are_a_data_error():
    examples = _examples(n=5)
    examples.images[2, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="1 images contain NaN"):
        evaluate_run(FakeRun(), examples)


class MixtureRun(FakeRun):
    """Under TTA, returns eight views (components) that disagree: half the views put the
    mean 0.3 off, so the mixture is bimodal and its moments describe it badly."""

    def predict(self, images, batch_size=256, tta=False):
        out = super().predict(images, batch_size, tta)
        if tta:
            mean = out[TARGET]["mean"]
            views = np.stack([mean + (0.3 if k % 2 else 0.0) for k in range(8)])
            out[TARGET]["components"] = {"mean": views, "std": np.full_like(views, 0.1)}
            out[TARGET]["mean"] = views.mean(axis=0)
            out[TARGET]["std"] = np.sqrt(0.01 + views.var(axis=0))
        return out


def test_tta_coverage_comes_from_the_eight_view_mixture():
    from deeplense_tf.predictive import Predictive

    examples = _examples(n=400)
    metrics, table = evaluate_run(MixtureRun(), examples, tta=True)
    result = metrics["targets"][TARGET]
    assert metrics["distribution"][TARGET] == {"family": "gaussian", "components": 8}
    raw = MixtureRun().predict(examples.images, tta=True)[TARGET]
    mixture = Predictive(raw["components"]["mean"], raw["components"]["std"])
    truth = examples.targets[TARGET]
    expected = mixture.central_coverage(truth, [0.68, 0.95])
    assert result["overall"]["coverage_68"] == pytest.approx(expected[0])
    assert result["overall"]["nll"] == pytest.approx(mixture.nll(truth))
    moment_matched = Predictive(raw["mean"], raw["std"]).central_coverage(truth, [0.68])
    assert result["overall"]["coverage_68"] != pytest.approx(moment_matched[0], abs=0.02)


def test_coverage_markdown_has_the_curve_the_bins_and_the_figure(tmp_path):
    metrics, table = evaluate_run(FakeRun(), _examples(n=60), bins=4)
    write_evaluation(metrics, table, tmp_path)
    md = coverage_markdown(metrics, plots_prefix="eval/")
    assert "Largest |observed − nominal|" in md and "| nominal | 5% | 10%" in md
    assert md.count("\n| [") == 4  # one row per bin
    assert f"](eval/plots/{TARGET}_coverage.png)" in md
    point, _ = evaluate_run(FakeRun(head="point"), _examples(n=40), bins=3)
    assert coverage_markdown(point) == ""

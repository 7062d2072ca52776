"""Evaluation of trained runs: metrics, plots, reports, `deeplense evaluate` and `predict`.

    from deeplense_tf.evaluation import evaluate_command, regression_metrics
    metrics = evaluate_command("runs/resnet", "data/model2", tta=True)   # writes runs/resnet/eval
    regression_metrics(y_true, y_pred, y_std)   # MAE, RMSE, R², bias, median AE, coverage, NLL

Modules: `metrics` (pure numpy, physical units; coverage from the actual predictive
distribution), `plots` (per target: predicted vs true, residuals vs true, calibration;
the coverage figure), `report` (evaluate a run on `Examples`, write metrics.json /
predictions.csv / plots, text and Markdown tables, `coverage_markdown` for any report),
`population` (one shared axion mass from many lenses), and the command-line faces
`evaluate_cli`, `predict_cli`, `calibrate_cli`, `infer_population_cli` (`deeplense evaluate`,
`predict`, `calibrate`, `infer-population`).

Names load lazily, so importing this package does not import TensorFlow or matplotlib.
"""

from __future__ import annotations

from deeplense_tf._lazy import lazy_exports

_EXPORTS = {
    "COVERAGE_LEVELS": "metrics",
    "DEFAULT_BINS": "metrics",
    "binned_metrics": "metrics",
    "coverage": "metrics",
    "coverage_curve": "metrics",
    "coverage_report": "metrics",
    "distribution_metrics": "metrics",
    "evaluate_target": "metrics",
    "gaussian_metrics": "metrics",
    "gaussian_nll": "metrics",
    "point_metrics": "metrics",
    "regression_metrics": "metrics",
    "plot_coverage": "plots",
    "plot_target": "plots",
    "combine_posteriors": "population",
    "infer_population": "population",
    "coverage_markdown": "report",
    "evaluate_run": "report",
    "format_table": "report",
    "markdown_table": "report",
    "write_evaluation": "report",
    "evaluate_command": "evaluate_cli",
    "predict_inputs": "predict_cli",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

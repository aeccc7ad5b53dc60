"""Report of a prequential run: ``metrics.json``, ``report.md`` and its figures.

The figures are PNG files drawn with matplotlib's Agg backend: precision-recall
and ROC curves of each test fold, a calibration curve and the final model's
feature importance (total gain). The Markdown report puts the book's published
prequential test scores beside ours.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightgbm as lgb
import matplotlib
import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from fraudcore.features import MODEL_INPUTS
from training.evaluation import LABEL_COLUMN, SCORE_COLUMN

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be set first

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
PR_FIGURE = "precision_recall.png"
ROC_FIGURE = "roc.png"
CALIBRATION_FIGURE = "calibration.png"
IMPORTANCE_FIGURE = "feature_importance.png"
CALIBRATION_MIN_ROWS = 20

# Rows of published-test-results.csv measured with the same prequential folds.
PUBLISHED_EXPERIMENTS = ("ch5_prequential_4fold", "ch7_prequential_4fold")
_PUBLISHED_METRICS = {
    "AUC ROC": "auc_roc",
    "Average precision": "average_precision",
    "Card Precision@100": "card_precision_at_100",
}
# The product's goal for the mean over the test folds.
TARGETS = {"average_precision": 0.75, "card_precision_at_100": 0.32}
_LABELS = {
    "auc_roc": "AUC ROC",
    "average_precision": "AP",
    "card_precision_at_100": "CP@100",
}


def machine_description() -> dict[str, Any]:
    """Return the cores, CPU model, memory and Python of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024**3
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(memory, 1),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def published_rows(path: Path) -> list[dict[str, Any]]:
    """Return the book's prequential test scores, one dict per model and selection.

    The book chooses the parameters per metric, so one row of ours gathers the
    ``parameter_setting`` entries that share a selection ("default", "best on
    validation", "optimal on test"). Each dict has ``experiment``, ``model``,
    ``selection`` and, per metric name of this job, ``{"mean", "std",
    "parameters"}``, where ``parameters`` is the text in brackets.
    """
    table = pd.read_csv(path)
    table = table[table["experiment"].isin(PUBLISHED_EXPERIMENTS)]
    # "best on validation (50/0.3/3)": the selection, then the parameters.
    pattern = r"^(?P<selection>[^(]*?)\s*(?:\((?P<parameters>.*)\))?$"
    table = table.join(table["parameter_setting"].str.extract(pattern))
    rows: list[dict[str, Any]] = []
    keys = ["experiment", "model", "selection"]
    for (experiment, model, selection), group in table.groupby(keys, sort=False):
        row: dict[str, Any] = {
            "experiment": experiment,
            "model": model,
            "selection": selection,
        }
        for _, entry in group.iterrows():
            name = _PUBLISHED_METRICS.get(entry["metric"])
            if name is not None:
                std, parameters = entry["test_std"], entry["parameters"]
                row[name] = {
                    "mean": float(entry["test_mean"]),
                    "std": None if pd.isna(std) else float(std),
                    "parameters": None if pd.isna(parameters) else parameters,
                }
        rows.append(row)
    return rows


def write_report(
    folder: Path,
    metrics: dict[str, Any],
    scored_folds: Sequence[tuple[str, pd.DataFrame]],
    model: lgb.LGBMClassifier,
    published_csv: Path | None = None,
) -> Path:
    """Write ``metrics.json``, the figures and ``report.md`` into ``folder``.

    Parameters
    ----------
    folder : Path
    metrics : dict
        The run's metrics as :func:`training.prequential.run` builds them.
    scored_folds : sequence of (str, pandas.DataFrame)
        Each test fold's name and its test rows with ``fraud`` and ``score``.
    model : lightgbm.LGBMClassifier
        The final model, for the feature importance.
    published_csv : Path, optional
        The book's ``published-test-results.csv``; no comparison when None or
        missing.

    Returns
    -------
    Path
        The path of ``report.md``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if published_csv is not None and published_csv.exists():
        metrics = metrics | {"published": published_rows(published_csv)}
    else:
        log.warning("no published results at %s; the report omits them", published_csv)
        metrics = metrics | {"published": []}
    (folder / METRICS_FILE).write_text(
        json.dumps(metrics, indent=2, default=_json_default) + "\n"
    )
    save_curves(scored_folds, folder)
    save_calibration(scored_folds, folder / CALIBRATION_FIGURE)
    save_importance(model, folder / IMPORTANCE_FIGURE, metrics["feature_names"])
    path = folder / REPORT_FILE
    path.write_text(markdown_report(metrics))
    summary = metrics["test_summary"]
    log.info(
        "test folds: AUC ROC %.3f ± %.3f, AP %.3f ± %.3f, CP@100 %.3f ± %.3f; "
        "report %s",
        *(summary[name][part] for name in _LABELS for part in ("mean", "std")),
        path,
    )
    return path


def save_curves(scored_folds: Sequence[tuple[str, pd.DataFrame]], folder: Path) -> None:
    """Save the precision-recall and ROC curves of every test fold."""
    pr_figure, pr_axes = plt.subplots(figsize=(6, 4.5))
    roc_figure, roc_axes = plt.subplots(figsize=(6, 4.5))
    for name, scored in scored_folds:
        y, score = scored[LABEL_COLUMN], scored[SCORE_COLUMN]
        precision, recall, _ = precision_recall_curve(y, score)
        pr_axes.plot(recall, precision, label=name)
        false_positive, true_positive, _ = roc_curve(y, score)
        roc_axes.plot(false_positive, true_positive, label=name)
    roc_axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for axes, x_label, y_label in (
        (pr_axes, "recall", "precision"),
        (roc_axes, "false positive rate", "true positive rate"),
    ):
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        axes.grid(alpha=0.3)
        axes.legend()
    pr_axes.set_title("Precision-recall, test folds")
    roc_axes.set_title("ROC, test folds")
    _save(pr_figure, folder / PR_FIGURE)
    _save(roc_figure, folder / ROC_FIGURE)


def save_calibration(
    scored_folds: Sequence[tuple[str, pd.DataFrame]], path: Path
) -> None:
    """Save the calibration curve of each test fold over log-spaced bins.

    Fewer than 1% of the transactions are fraud and most probabilities are near
    0, so the bins are evenly spaced in log10 of the probability from 1e-4 to 1.
    Bins with fewer than ``CALIBRATION_MIN_ROWS`` rows are left out as noise.
    The y axis is linear below 0.001 so that bins without fraud still show.
    """
    edges = np.logspace(-4, 0, 13)
    figure, axes = plt.subplots(figsize=(6, 4.5))
    for name, scored in scored_folds:
        probability = scored[SCORE_COLUMN].clip(lower=edges[0]).to_numpy()
        fraud = scored[LABEL_COLUMN].to_numpy()
        bins = np.clip(np.digitize(probability, edges[1:-1]), 0, len(edges) - 2)
        frame = pd.DataFrame({"bin": bins, "p": probability, "fraud": fraud})
        grouped = frame.groupby("bin").agg(
            predicted=("p", "mean"), observed=("fraud", "mean"), rows=("p", "size")
        )
        grouped = grouped[grouped["rows"] >= CALIBRATION_MIN_ROWS]
        axes.plot(grouped["predicted"], grouped["observed"], marker="o", label=name)
    axes.plot([1e-4, 1], [1e-4, 1], color="grey", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    axes.set_yscale("symlog", linthresh=1e-3)
    axes.set_ylim(0, 1)
    axes.set_xlabel("mean predicted fraud probability")
    axes.set_ylabel("observed fraud rate")
    axes.set_title("Calibration, test folds (log-spaced bins)")
    axes.grid(alpha=0.3)
    axes.legend()
    _save(figure, path)


def save_importance(
    model: lgb.LGBMClassifier, path: Path, inputs: Sequence[str] = MODEL_INPUTS
) -> None:
    """Save the total split gain of each model input, named by ``inputs``."""
    gain = model.booster_.feature_importance(importance_type="gain")
    order = np.argsort(gain)
    figure, axes = plt.subplots(figsize=(7, 0.3 * len(inputs) + 1.5))
    axes.barh([inputs[i] for i in order], gain[order])
    axes.set_xlabel("total gain of the splits on the feature")
    axes.set_title("Feature importance of the final model")
    axes.grid(alpha=0.3, axis="x")
    _save(figure, path)


def _save(figure: Any, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def markdown_report(metrics: dict[str, Any]) -> str:
    """Render the run's metrics as Markdown."""
    lines = [
        f"# Training report {metrics['version']}",
        "",
        f"Created {metrics['created_at']}. Protocol: {metrics['protocol']}; the "
        "search saw only the validation folds, and each fold's training rows "
        "are the labels known at its cut-off. The final model is the one of "
        f"{metrics['final_model_fold']}.",
        "",
        "## Test folds",
        "",
        *_fold_table(metrics["test_folds"], metrics["test_summary"]),
        "",
        *_target_lines(metrics["test_summary"]),
        "",
        "## Beside the published prequential results",
        "",
        "The book's rows come from `published-test-results.csv` (test folds, mean "
        "± std). Ours is the row in bold.",
        "",
        *_published_table(metrics),
        "",
        "## Validation folds (chosen parameters)",
        "",
        *_fold_table(metrics["validation_folds"], metrics["validation_summary"]),
        "",
        "## Hyperparameters",
        "",
        f"Search: {metrics['search']['trials']} trials, seed "
        f"{metrics['search']['seed']}, objective {metrics['search']['objective']}; "
        f"best trial {metrics['search']['best_trial']} at "
        f"{metrics['search']['best_value']:.4f}.",
        "",
        "| parameter | value |",
        "|---|---|",
        *(
            f"| {name} | {value} |"
            for name, value in metrics["hyperparameters"].items()
            if name != "constraints"
        ),
        f"| monotone constraints | {metrics['hyperparameters']['constraints']} |",
        "",
        "## Checks",
        "",
        f"- Data contract: {metrics['contract_expectations_passed']} expectations "
        "passed over the training sets of all folds.",
        f"- ONNX max abs diff from LightGBM: {metrics['onnx_max_abs_diff']:.3g} "
        f"over {metrics['onnx_parity_rows']:,} rows.",
        f"- Monotonicity violations: {metrics['monotonicity_violations']}.",
        f"- Block threshold: {metrics['block_threshold']:.4f}.",
        f"- Training seconds: {metrics['training_seconds']}; whole run "
        f"{metrics['total_seconds']:.0f} s.",
        f"- Machine: {metrics['machine']['cores']} cores, "
        f"{metrics['machine']['cpu']}, {metrics['machine']['memory_gib']} GiB.",
        "",
        "## Figures",
        "",
        f"![Precision-recall]({PR_FIGURE})",
        f"![ROC]({ROC_FIGURE})",
        f"![Calibration]({CALIBRATION_FIGURE})",
        f"![Feature importance]({IMPORTANCE_FIGURE})",
        "",
    ]
    return "\n".join(lines)


def _fold_table(
    folds: Sequence[dict[str, Any]], summary: dict[str, dict[str, float]]
) -> list[str]:
    lines = [
        "| fold | train | test | test rows | test frauds | AUC ROC | AP | CP@100 |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for fold in folds:
        lines.append(
            f"| {fold['fold']} | {fold['train'][0]}..{fold['train'][1]} "
            f"| {fold['test'][0]}..{fold['test'][1]} | {fold['test_rows']:,} "
            f"| {fold['test_frauds']:,} | "
            + " | ".join(f"{fold[name]:.3f}" for name in _LABELS)
            + " |"
        )
    lines.append(
        "| **mean ± std** | | | | | "
        + " | ".join(
            f"**{summary[name]['mean']:.3f} ± {summary[name]['std']:.3f}**"
            for name in _LABELS
        )
        + " |"
    )
    return lines


def _target_lines(summary: dict[str, dict[str, float]]) -> list[str]:
    parts = []
    for name, target in TARGETS.items():
        mean = summary[name]["mean"]
        verdict = "met" if mean >= target else "not met"
        parts.append(f"{_LABELS[name]} {mean:.3f} against ≥ {target} ({verdict})")
    return ["Product target on the test-fold means: " + "; ".join(parts) + "."]


def _published_table(metrics: dict[str, Any]) -> list[str]:
    lines = [
        "| experiment | model | parameters | AUC ROC | AP | CP@100 |",
        "|---|---|---|---:|---:|---:|",
    ]
    summary = metrics["test_summary"]
    lines.append(
        "| **this run** | **LightGBM, monotone** | **best on validation** | "
        + " | ".join(
            f"**{summary[name]['mean']:.3f} ± {summary[name]['std']:.3f}**"
            for name in _LABELS
        )
        + " |"
    )
    for row in metrics["published"]:
        cells = [_published_cell(row.get(name)) for name in _LABELS]
        lines.append(
            f"| {row['experiment']} | {row['model']} | {row['selection']} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _published_cell(value: dict[str, Any] | None) -> str:
    if value is None:
        return ""
    cell = f"{value['mean']:.3f}"
    if value["std"] is not None:
        cell += f" ± {value['std']:.3f}"
    if value["parameters"] is not None:
        cell += f" ({value['parameters']})"
    return cell


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")

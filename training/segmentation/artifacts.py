"""Files of a run: the JSON report, the labelled rows and the figures."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from training.segmentation import plots
from training.segmentation.analysis import Analysis
from training.segmentation.config import SegmentationConfig
from training.segmentation.sweep import METRICS, SCORED

log = logging.getLogger(__name__)

REPORT_FILE = "clustering_report.json"
OUTPUT_FILE = "clustered_output_with_labels.csv"
CLUSTER_COLUMN = "cluster"

COMPOSITE_RULE = (
    "Among candidates with exactly k non-empty clusters, each of silhouette "
    "(higher is better), Calinski-Harabasz (higher) and Davies-Bouldin (lower) "
    "is ranked across all method and k candidates, 1 for the best and the "
    "average rank for ties. The candidate with the lowest mean of its three "
    "ranks is chosen. Ties go to the higher silhouette, then the smaller k, "
    "then the method order kmeans, gmm, ward."
)


def write_labelled_rows(
    frame: pd.DataFrame, labels: npt.NDArray[np.int64], path: Path
) -> str:
    """Write the input rows plus a cluster column to CSV; return the column's name.

    The column is ``cluster``, or ``cluster_1``, ``cluster_2``, ... when the
    input already has a column of that name.
    """
    name = CLUSTER_COLUMN
    suffix = 0
    while name in frame.columns:
        suffix += 1
        name = f"{CLUSTER_COLUMN}_{suffix}"
    frame.assign(**{name: labels}).to_csv(path, index=False)
    return name


def write_figures(
    analysis: Analysis, config: SegmentationConfig, report_dir: Path
) -> dict[str, str]:
    """Draw every figure into ``report_dir``; return figure names by file name."""
    candidates = analysis.sweep.candidates
    chosen = analysis.sweep.chosen
    files: dict[str, str] = {}
    for metric in METRICS:
        name = plots.METRIC_FILES[metric]
        plots.plot_metric_by_k(candidates, metric, chosen, report_dir / name)
        files[name] = f"{plots.METRIC_TITLES[metric]} against k, one line per method"

    rows = _plot_rows(len(analysis.labels), config)
    plots.plot_pca(
        analysis.projection, analysis.labels, rows, report_dir / plots.PCA_FILE
    )
    files[plots.PCA_FILE] = "first two principal components, coloured by cluster"
    plots.plot_cluster_sizes(analysis.sizes, report_dir / plots.SIZES_FILE)
    files[plots.SIZES_FILE] = "rows per cluster"
    top = analysis.anova.head(config.top_features)
    plots.plot_anova(top, report_dir / plots.ANOVA_FILE)
    files[plots.ANOVA_FILE] = "ANOVA F of the top separating features"
    return files


def _plot_rows(n_rows: int, config: SegmentationConfig) -> npt.NDArray[np.int64] | None:
    if n_rows <= config.plot_max_rows:
        return None
    rng = np.random.default_rng(config.seed)
    return np.sort(rng.choice(n_rows, size=config.plot_max_rows, replace=False))


def build_report(
    analysis: Analysis, config: SegmentationConfig, source: dict[str, Any]
) -> dict[str, Any]:
    """Collect the JSON report of an analysis.

    ``source`` describes where the input came from. The caller adds the
    version, publication, artifacts and run time.
    """
    sweep = analysis.sweep
    chosen = sweep.chosen
    n_rows = len(analysis.labels)
    return {
        "source": source,
        "config": config.to_dict(),
        "preprocessing": analysis.preprocessed.report.to_dict(),
        "sampling": sweep.samples.to_dict(n_rows, config),
        "composite_rule": COMPOSITE_RULE,
        "candidates": [candidate.to_dict() for candidate in sweep.candidates],
        "not_ranked": [
            {"method": c.method, "k": c.k, "status": c.status, "reason": c.reason}
            for c in sweep.candidates
            if c.status != SCORED
        ],
        "choice": {
            "method": chosen.method,
            "k": chosen.k,
            "mean_rank": chosen.mean_rank,
            "ranked_candidates": sum(c.status == SCORED for c in sweep.candidates),
            **{metric: getattr(chosen, metric) for metric in METRICS},
        },
        "cluster_sizes": {str(k): v for k, v in analysis.sizes.items()},
        "pca": {
            "explained_variance_ratio": analysis.projection.explained_variance_ratio,
            "total_explained_variance_ratio": sum(
                analysis.projection.explained_variance_ratio
            ),
        },
        "top_features": _top_features(analysis, config),
        "cluster_means_of_top_features": analysis.means,
        "notes": sampling_notes(analysis, config),
    }


def _top_features(
    analysis: Analysis, config: SegmentationConfig
) -> list[dict[str, Any]]:
    rows = []
    for record in analysis.anova.head(config.top_features).itertuples(index=False):
        f_value = float(record.f_value)
        rows.append(
            {
                "feature": record.feature,
                "f_value": f_value if math.isfinite(f_value) else None,
                "p_value": None if pd.isna(record.p_value) else float(record.p_value),
                "note": None if math.isfinite(f_value) else _f_note(f_value),
            }
        )
    return rows


def _f_note(f_value: float) -> str:
    if math.isnan(f_value):
        return "F is undefined: the feature is constant inside and across clusters"
    return "F is infinite: the feature is constant inside every cluster"


def sampling_notes(analysis: Analysis, config: SegmentationConfig) -> list[str]:
    """Describe in sentences where samples replaced the full input."""
    samples = analysis.sweep.samples
    n_rows = len(analysis.labels)
    notes = []
    if samples.ward is not None:
        notes.append(
            f"Ward linkage was fit on a random sample of {len(samples.ward)} of "
            f"{n_rows} rows (seed {config.seed}) because it needs memory quadratic "
            "in the rows; the other rows went to the nearest cluster centroid."
        )
    if samples.silhouette is not None:
        notes.append(
            f"The silhouette was computed on a random sample of "
            f"{len(samples.silhouette)} of {n_rows} rows (seed {config.seed}), the "
            "same rows for every candidate; Calinski-Harabasz and Davies-Bouldin "
            "used every row."
        )
    if n_rows > config.plot_max_rows:
        notes.append(
            f"The PCA scatter draws a random sample of {config.plot_max_rows} rows."
        )
    if not notes:
        notes.append("No sampling: every step used every row.")
    return notes


def write_report(report: dict[str, Any], path: Path) -> None:
    """Write the report as strict JSON: NaN and infinities become null."""
    text = json.dumps(_strict(report), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    log.info("wrote %s", path)


def _strict(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value

"""The whole analysis of one feature table, without any file or store output."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd

from training.segmentation.config import SegmentationConfig
from training.segmentation.preprocess import Preprocessed, preprocess
from training.segmentation.summary import (
    Projection,
    anova_f,
    cluster_means,
    cluster_sizes,
    project_pca,
    relabel_by_size,
)
from training.segmentation.sweep import SweepResult, run_sweep

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Analysis:
    """Everything computed about one input table.

    Attributes
    ----------
    preprocessed : Preprocessed
    sweep : SweepResult
    labels : numpy.ndarray of shape (n_rows,)
        Clusters of the chosen candidate, renumbered from the largest (0).
    sizes : dict of int to int
    projection : Projection
    anova : pandas.DataFrame of shape (n_features, 3)
        Every kept feature by decreasing ANOVA F.
    top_features : list of str
    means : dict
        Per-cluster means of the top features in original units.
    seconds : dict of str to float
        Wall time of each step.
    """

    preprocessed: Preprocessed
    sweep: SweepResult
    labels: npt.NDArray[np.int64]
    sizes: dict[int, int]
    projection: Projection
    anova: pd.DataFrame
    top_features: list[str]
    means: dict[str, dict[str, float | None]]
    seconds: dict[str, float] = field(default_factory=dict)


def analyse(
    frame: pd.DataFrame, config: SegmentationConfig, id_column: str | None = None
) -> Analysis:
    """Preprocess a table, sweep the methods and describe the chosen clustering.

    Parameters
    ----------
    frame : pandas.DataFrame of shape (n_rows, n_columns)
    config : SegmentationConfig
    id_column : str or None
        Column that identifies a row and is not a feature.

    Returns
    -------
    Analysis

    Raises
    ------
    InputDataError
        If the table has no usable feature, or no k can be scored on it.
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    prepared = preprocess(frame, id_column)
    seconds["preprocess"] = _elapsed(started)

    started = time.perf_counter()
    sweep = run_sweep(prepared.scaled, config)
    seconds["sweep"] = _elapsed(started)

    started = time.perf_counter()
    assert sweep.chosen.labels is not None
    labels = relabel_by_size(sweep.chosen.labels)
    anova = anova_f(prepared.imputed, labels)
    top = anova["feature"].head(config.top_features).tolist()
    original = frame.rename(columns=str)[top].astype("float64")
    analysis = Analysis(
        preprocessed=prepared,
        sweep=sweep,
        labels=labels,
        sizes=cluster_sizes(labels),
        projection=project_pca(prepared.scaled, config.seed),
        anova=anova,
        top_features=top,
        means=cluster_means(original, labels),
        seconds=seconds,
    )
    seconds["describe"] = _elapsed(started)
    log.info(
        "chose %s with k=%d (mean rank %.2f); cluster sizes %s",
        sweep.chosen.method,
        sweep.chosen.k,
        sweep.chosen.mean_rank,
        analysis.sizes,
    )
    return analysis


def _elapsed(started: float) -> float:
    return round(time.perf_counter() - started, 3)

"""PNG figures of the sweep and of the chosen clustering.

Figures are drawn with :class:`matplotlib.figure.Figure` and saved through the
Agg canvas, so no display and no global pyplot state are involved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from training.segmentation.summary import Projection
from training.segmentation.sweep import HIGHER_IS_BETTER, Candidate

METRIC_TITLES = {
    "silhouette": "Silhouette",
    "calinski_harabasz": "Calinski-Harabasz",
    "davies_bouldin": "Davies-Bouldin",
}
METRIC_FILES = {name: f"{name}_by_k.png" for name in METRIC_TITLES}
PCA_FILE = "pca_scatter.png"
SIZES_FILE = "cluster_sizes.png"
ANOVA_FILE = "anova_f_top_features.png"

METHOD_LABELS = {
    "kmeans": "K-Means",
    "gmm": "Gaussian mixture (full)",
    "ward": "Agglomerative Ward",
}
DPI = 110


def plot_metric_by_k(
    candidates: list[Candidate], metric: str, chosen: Candidate, path: Path
) -> None:
    """Draw one metric against k, one line per method, the choice circled."""
    figure = Figure(figsize=(7, 4.5), dpi=DPI)
    axes = figure.subplots()

    for method, label in METHOD_LABELS.items():
        points = [
            (c.k, getattr(c, metric))
            for c in candidates
            if c.method == method and getattr(c, metric) is not None
        ]
        if points:
            ks, values = zip(*points, strict=True)
            axes.plot(ks, values, marker="o", label=label)
    axes.scatter(
        [chosen.k],
        [getattr(chosen, metric)],
        s=220,
        facecolors="none",
        edgecolors="black",
        linewidths=1.5,
        label=f"chosen: {METHOD_LABELS[chosen.method]}, k={chosen.k}",
        zorder=3,
    )

    better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    axes.set_title(
        f"{METRIC_TITLES[metric]} by number of clusters ({better} is better)"
    )
    axes.set_xlabel("number of clusters k")
    axes.set_ylabel(METRIC_TITLES[metric])
    axes.set_xticks(sorted({c.k for c in candidates}))
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    _save(figure, path)


def plot_pca(
    projection: Projection,
    labels: npt.NDArray[np.int64],
    rows: npt.NDArray[np.int64] | None,
    path: Path,
) -> None:
    """Draw the rows on the first two principal components, coloured by cluster.

    ``rows`` limits the points drawn to a sample; None draws every row.
    """
    coordinates = projection.coordinates
    shown_labels = labels
    if rows is not None:
        coordinates = coordinates[rows]
        shown_labels = labels[rows]
    figure = Figure(figsize=(7.5, 6), dpi=DPI)
    axes = figure.subplots()
    colours = _cluster_colours(int(labels.max()) + 1)
    for cluster in np.unique(labels):
        mask = shown_labels == cluster
        axes.scatter(
            coordinates[mask, 0],
            coordinates[mask, 1],
            s=6,
            alpha=0.5,
            color=colours[int(cluster)],
            label=f"cluster {cluster} ({int((labels == cluster).sum())} rows)",
            rasterized=True,
        )
    ratio = projection.explained_variance_ratio + [0.0]
    title = "PCA of the scaled features"
    if rows is not None:
        title += f" ({len(rows)} of {len(labels)} rows drawn)"
    axes.set_title(title)
    axes.set_xlabel(f"PC1 ({ratio[0]:.1%} of variance)")
    axes.set_ylabel(f"PC2 ({ratio[1]:.1%} of variance)")
    axes.grid(alpha=0.3)
    legend = axes.legend(fontsize="small", markerscale=3)
    for handle in legend.legend_handles:
        if handle is not None:
            handle.set_alpha(1.0)
    _save(figure, path)


def plot_cluster_sizes(sizes: dict[int, int], path: Path) -> None:
    """Draw the number of rows per cluster as bars labelled with their counts."""
    figure = Figure(figsize=(7, 4.5), dpi=DPI)
    axes = figure.subplots()
    clusters = list(sizes)
    counts = [sizes[c] for c in clusters]
    colours = _cluster_colours(max(clusters) + 1)
    bars = axes.bar(clusters, counts, color=[colours[c] for c in clusters])
    axes.set_xticks(clusters, [str(c) for c in clusters])
    axes.bar_label(bars, labels=[f"{n:,}" for n in counts], fontsize="small")
    axes.set_title(f"Cluster sizes ({sum(counts):,} rows)")
    axes.set_xlabel("cluster")
    axes.set_ylabel("rows")
    axes.margins(y=0.12)
    _save(figure, path)


def plot_anova(top: pd.DataFrame, path: Path) -> None:
    """Draw the ANOVA F of the top features as horizontal bars.

    Infinite or missing F values have no bar, and their tick label shows the value.
    """
    figure = Figure(figsize=(7.5, 0.6 * len(top) + 1.8), dpi=DPI)
    axes = figure.subplots()
    finite = top["f_value"].where(np.isfinite(top["f_value"]), 0.0).fillna(0.0)
    names = [
        name if np.isfinite(value) else f"{name} (F {value})"
        for name, value in zip(top["feature"], top["f_value"], strict=True)
    ]
    positions = np.arange(len(top))[::-1]
    bars = axes.barh(positions, finite, color="tab:blue")
    axes.bar_label(
        bars, labels=[f"{v:,.1f}" for v in finite], fontsize="small", padding=3
    )
    axes.set_yticks(positions, names)
    if finite.max() > 0 and finite[finite > 0].min() * 100 < finite.max():
        axes.set_xscale("log")
    axes.set_title("ANOVA F of the top separating features")
    axes.set_xlabel("F value")
    axes.margins(x=0.15)
    _save(figure, path)


def _cluster_colours(count: int) -> list[tuple[float, float, float, float]]:
    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(index % palette.N) for index in range(count)]


def _save(figure: Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path)

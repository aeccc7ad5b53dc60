"""Parameters of one segmentation run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

METHODS = ("kmeans", "gmm", "ward")


@dataclass(frozen=True)
class SegmentationConfig:
    """Parameters of the sweep and of the description of the chosen solution.

    Attributes
    ----------
    seed : int
        Seed of every random step: K-Means and mixture initialisation and every
        row sample. Two runs with the same input and config give the same labels.
    k_min, k_max : int
        Range of cluster counts swept, both included.
    methods : tuple of str
        Methods swept, a subset of ``METHODS`` in that order.
    ward_max_rows : int
        Ward linkage keeps a condensed distance matrix of n * (n - 1) / 2 floats,
        about 400 MB at 10,000 rows. Above this many rows it is therefore fit on
        a random sample of this size, and the other rows go to the nearest
        cluster centroid of the sample.
    silhouette_max_rows : int
        The silhouette needs all pairwise distances, so above this many rows it
        is computed on one random sample of this size, the same rows for every
        candidate. Calinski-Harabasz and Davies-Bouldin always use every row.
    plot_max_rows : int
        At most this many randomly chosen rows are drawn in the PCA scatter.
    top_features : int
        Number of features, by ANOVA F, described per cluster.
    kmeans_n_init, gmm_n_init : int
        Initialisations per K-Means and Gaussian-mixture fit; the best is kept.
    """

    seed: int = 0
    k_min: int = 2
    k_max: int = 10
    methods: tuple[str, ...] = METHODS
    ward_max_rows: int = 10_000
    silhouette_max_rows: int = 10_000
    plot_max_rows: int = 20_000
    top_features: int = 5
    kmeans_n_init: int = 10
    gmm_n_init: int = 2

    def __post_init__(self) -> None:
        if not 2 <= self.k_min <= self.k_max:
            raise ValueError(
                f"k range must satisfy 2 <= k_min <= k_max, got "
                f"k_min={self.k_min} and k_max={self.k_max}."
            )
        unknown = [name for name in self.methods if name not in METHODS]
        if unknown or not self.methods:
            raise ValueError(
                f"methods must be a non-empty subset of {list(METHODS)}, "
                f"got {list(self.methods)}."
            )
        for name in ("ward_max_rows", "silhouette_max_rows", "plot_max_rows"):
            if getattr(self, name) < self.k_max + 1:
                raise ValueError(
                    f"{name} must be at least k_max + 1 = {self.k_max + 1}, "
                    f"got {getattr(self, name)}."
                )
        for name in ("top_features", "kmeans_n_init", "gmm_n_init"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be at least 1, got {getattr(self, name)}."
                )

    @property
    def k_values(self) -> range:
        """Cluster counts swept, in increasing order."""
        return range(self.k_min, self.k_max + 1)

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as JSON-ready values, as written to the report."""
        values = asdict(self)
        values["methods"] = list(self.methods)
        return values

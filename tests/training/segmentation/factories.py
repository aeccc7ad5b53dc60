"""Builders of small feature tables for the segmentation tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.datasets import make_blobs

from training.segmentation.config import SegmentationConfig

# A sweep small enough to keep each test well under a second or two.
FAST_CONFIG = SegmentationConfig(k_max=5, kmeans_n_init=3, gmm_n_init=1)


def blob_table(
    rows: int = 120, centers: int = 3, features: int = 3, seed: int = 3
) -> pd.DataFrame:
    """Return well-separated Gaussian blobs as columns ``x0``, ``x1``, ..."""
    values, _ = make_blobs(
        n_samples=rows,
        centers=centers,
        n_features=features,
        cluster_std=0.5,
        random_state=seed,
    )
    return pd.DataFrame(values, columns=[f"x{i}" for i in range(features)])


def blob_matrix(rows: int = 120, centers: int = 3, seed: int = 3) -> np.ndarray:
    """Return the blobs of :func:`blob_table` as a float matrix."""
    return blob_table(rows, centers, seed=seed).to_numpy()

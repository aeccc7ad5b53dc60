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


def offline_rows(customers: int = 40, days: int = 7, seed: int = 5) -> list[dict]:
    """Return offline-store rows of two kinds of customers over ``days`` days.

    Even customers buy small amounts several times a day, odd ones buy large
    amounts about every other day, so the profiles form two clear groups.
    """
    rng = np.random.default_rng(seed)
    start_ms = 1_532_476_800_000  # 2018-07-25T00:00:00Z
    rows: list[dict] = []
    for customer in range(customers):
        frequent = customer % 2 == 0
        count = int(rng.integers(15, 25)) if frequent else int(rng.integers(3, 5))
        for _ in range(count):
            rows.append(
                {
                    "transaction_id": str(len(rows)),
                    "customer_id": str(customer),
                    "terminal_id": str(rng.integers(0, 30)),
                    "event_ms": start_ms + int(rng.integers(0, days * 86_400_000)),
                    "fraud": 0,
                    "TX_AMOUNT": float(
                        rng.normal(20, 3) if frequent else rng.normal(150, 20)
                    ),
                    "TX_DURING_NIGHT": float(rng.random() < 0.2),
                    "TX_DURING_WEEKEND": float(rng.random() < 0.3),
                }
            )
    return rows

"""Reasons for review and block decisions: tree SHAP contributions from LightGBM.

The training job saves the LightGBM text model as ``lightgbm.txt`` beside the
ONNX file that it registers. The registry's sha256 covers only the ONNX file,
so the text model is accepted as the same model only after two checks:

* it lies in the folder of the ONNX file whose sha256 matched the registry, and
* on probe rows that put every input in each interval between its split
  thresholds, its fraud probability equals the verified ONNX model's within
  ``PARITY_TOLERANCE``.

A text model from another training run fails the second check, because its
trees differ. Each input's contribution to the log-odds (tree SHAP) then comes
from the tables of :mod:`services.scorer.treeshap`, which take a tenth of a
millisecond for a 300-tree model, or from LightGBM's ``predict(...,
pred_contrib=True)`` (several times slower) for a model that the tables
cannot represent or whose tables disagree with LightGBM on the probe rows. The
reasons are the inputs with the largest positive contributions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from services.scorer.errors import ModelLoadError
from services.scorer.model import ScoringModel
from services.scorer.schemas import Reason
from services.scorer.treeshap import PathTables, UnsupportedTree, build_tables

logger = logging.getLogger(__name__)

LIGHTGBM_FILE = "lightgbm.txt"
# The training job accepts an ONNX export that differs from LightGBM by up to
# 1e-5 in probability, so the same tolerance applies here.
PARITY_TOLERANCE = 1e-5
PROBE_ROWS = 2048
PROBE_SEED = 0
REASON_COUNT = 3
# Probe rows on which the tables must reproduce LightGBM's contributions. Both
# compute in float64 and differed by under 1e-14 on the models tried.
TABLE_PROBE_ROWS = 256
TABLE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Explainer:
    """The LightGBM text model of a served version, checked against its ONNX."""

    booster: lgb.Booster
    # None when LightGBM computes the contributions.
    tables: PathTables | None = None

    def reasons(
        self, features: Mapping[str, float], count: int = REASON_COUNT
    ) -> list[Reason]:
        """Return up to ``count`` inputs with the largest positive contributions.

        ``features`` maps every model input to its value, in model input order.
        Inputs that lowered the score are never reasons, so fewer than ``count``
        may come back.
        """
        names = list(features)
        values = list(features.values())
        # float32, as the ONNX model reads its inputs.
        row = np.asarray([values], dtype=np.float32)
        per_input = self.contributions(row)[0]
        ranked = np.argsort(-per_input, kind="stable")[:count]
        return [
            Reason(
                feature=names[i],
                value=values[i],
                contribution=float(per_input[i]),
            )
            for i in ranked
            if per_input[i] > 0.0
        ]

    def contributions(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Return the inputs' contributions for each row, shape ``(rows, inputs)``."""
        if self.tables is not None:
            return np.stack([self.tables.contributions(row) for row in rows])
        contributions = self.booster.predict(rows, pred_contrib=True, num_threads=1)
        # The last column is the expected value (bias), not an input.
        return np.asarray(contributions)[:, :-1]


def load_explainer(artifact: Path, model: ScoringModel) -> Explainer | None:
    """Load and check the text model beside the verified ONNX ``artifact``.

    Returns:
        The explainer, or None when the folder has no ``lightgbm.txt``; review
        and block decisions then come without reasons.

    Raises:
        ModelLoadError: if the text model cannot be read, has other inputs, or
            does not predict what the ONNX model predicts.
    """
    path = artifact.parent / LIGHTGBM_FILE
    if not path.exists():
        logger.warning(
            "model %s has no %s beside its ONNX file; review and block decisions "
            "will carry no reasons",
            model.version,
            LIGHTGBM_FILE,
        )
        return None
    try:
        booster = lgb.Booster(model_file=str(path))
    except lgb.basic.LightGBMError as exc:
        raise ModelLoadError(
            f"reading {path} of model {model.version!r} failed: {exc}"
        ) from exc
    check_same_model(booster, model, path)
    return Explainer(booster, checked_tables(booster, model.version))


def checked_tables(booster: lgb.Booster, version: str) -> PathTables | None:
    """Build the contribution tables of ``booster`` and check them against LightGBM.

    Returns:
        The tables, or None, with a warning, when the model has trees that the
        tables cannot represent or the two disagree on the probe rows.
    """
    try:
        tables = build_tables(booster)
    except UnsupportedTree as exc:
        logger.warning(
            "model %s: %s, so LightGBM computes its reasons (slower)", version, exc
        )
        return None
    rows = probe_rows(booster, TABLE_PROBE_ROWS)
    expected = Explainer(booster).contributions(rows)
    actual = Explainer(booster, tables).contributions(rows)
    difference = float(np.abs(actual - expected).max())
    if difference > TABLE_TOLERANCE:
        logger.warning(
            "model %s: tree SHAP tables differ from LightGBM by up to %.3g on probe "
            "rows, so LightGBM computes its reasons (slower)",
            version,
            difference,
        )
        return None
    return tables


def check_same_model(booster: lgb.Booster, model: ScoringModel, path: Path) -> None:
    """Raise ModelLoadError unless ``booster`` predicts what ``model`` predicts."""
    if booster.num_feature() != len(model.inputs):
        raise ModelLoadError(
            f"{path} has {booster.num_feature()} inputs, but model "
            f"{model.version!r} takes {len(model.inputs)}"
        )
    rows = probe_rows(booster)
    expected = model.predict_rows(rows)
    actual = np.asarray(booster.predict(rows, num_threads=1), dtype=np.float64)
    difference = float(np.abs(actual - expected).max())
    if difference > PARITY_TOLERANCE:
        raise ModelLoadError(
            f"{path} is not the model of ONNX version {model.version!r}: their "
            f"fraud probabilities differ by up to {difference:.3g} on probe rows, "
            f"more than {PARITY_TOLERANCE:g}"
        )
    logger.info(
        "text model of %s matches its ONNX on %d probe rows (max abs diff %.3g)",
        model.version,
        len(rows),
        difference,
    )


def probe_rows(
    booster: lgb.Booster, count: int = PROBE_ROWS, seed: int = PROBE_SEED
) -> npt.NDArray[np.float32]:
    """Build rows whose inputs fall in every interval between split thresholds.

    Each input takes a random value from: one below its lowest threshold, one
    above its highest, and the float32 midpoint of each pair of neighbouring
    thresholds. The thresholds are first rounded down to float32, as the ONNX
    export rounds them, and a midpoint strictly between two rounded thresholds
    lies on the same side of every split in both models. Values at a threshold
    itself are avoided because there the two models may round differently.
    """
    thresholds: list[set[float]] = [set() for _ in range(booster.num_feature())]
    for feature, threshold in split_thresholds(booster):
        thresholds[feature].add(_float32_floor(threshold))
    rng = np.random.default_rng(seed)
    columns = [
        rng.choice(_interval_points(sorted(values)), size=count)
        for values in thresholds
    ]
    return np.column_stack(columns).astype(np.float32)


def _float32_floor(value: float) -> float:
    rounded = np.float32(value)
    if float(rounded) > value:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


def _interval_points(bounds: list[float]) -> npt.NDArray[np.float32]:
    if not bounds:
        return np.zeros(1, dtype=np.float32)
    # Steps of at least 1% stay clear of the bounds after float32 rounding.
    points = [
        bounds[0] - max(1.0, abs(bounds[0]) * 0.01),
        bounds[-1] + max(1.0, abs(bounds[-1]) * 0.01),
    ]
    for low, high in zip(bounds, bounds[1:], strict=False):
        middle = float(np.float32((low + high) / 2))
        if low < middle < high:
            points.append(middle)
    return np.asarray(points, dtype=np.float32)


def split_thresholds(booster: lgb.Booster) -> Iterator[tuple[int, float]]:
    """Yield ``(feature index, threshold)`` of every numerical split."""
    for tree in booster.dump_model()["tree_info"]:
        yield from _node_thresholds(tree["tree_structure"])


def _node_thresholds(node: dict[str, Any]) -> Iterator[tuple[int, float]]:
    if "split_feature" not in node:
        return
    if node.get("decision_type") == "<=":
        yield int(node["split_feature"]), float(node["threshold"])
    yield from _node_thresholds(node["left_child"])
    yield from _node_thresholds(node["right_child"])

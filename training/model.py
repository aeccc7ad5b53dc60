"""LightGBM fraud classifier with monotone constraints, and its ONNX export.

The served model is the ONNX graph. It takes one float32 row per transaction in
the order of ``ModelConfig.inputs`` (``MODEL_INPUTS``, plus ``CUSTOMER_SEGMENT``
for a model trained with segments) and returns ``label`` (int64, shape (n,)) and
``probabilities`` (float32, shape (n, 2), column 1 is fraud). The classifier is
fit on the same float32 values, and the export rounds every split threshold down
to float32, so LightGBM and ONNX send each row down the same branches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pandas as pd
from onnxmltools import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType
from sklearn.metrics import precision_recall_curve
from sklearn.model_selection import StratifiedKFold

from fraudcore.features import MODEL_INPUTS
from training.errors import InputDataError, VerificationError

log = logging.getLogger(__name__)

# Model input rows, shape (n_rows, len(inputs)); labels and probabilities,
# shape (n_rows,).
Matrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]
Vector = npt.NDArray[np.float64]

ONNX_INPUT_NAME = "features"
ONNX_LABEL_OUTPUT = "label"
ONNX_PROBABILITY_OUTPUT = "probabilities"

PARITY_TOLERANCE = 1e-5
# onnxruntime sums the tree outputs in float32, so a probability step that is
# zero or positive in exact arithmetic may come out slightly negative. Drops up
# to this size are not counted as violations.
MONOTONICITY_TOLERANCE = 1e-6

# Monotone constraints, +1 meaning the fraud probability may only rise with the
# feature when every other input is fixed. They follow the simulator's fraud
# scenarios and were checked against fraud rates in the reference features:
# * TX_AMOUNT: amounts above 220 are always fraud, and compromised cards have
#   their amounts multiplied by 5; the fraud rate rises with the amount.
# * TERMINAL_ID_RISK_1DAY/7DAY_WINDOW: a compromised terminal keeps producing
#   fraud for 28 days, so fraud seen there in the last days predicts fraud now.
# * TERMINAL_ID_RISK_30DAY_WINDOW is left free: its window ends 7 days ago and is
#   longer than a 28-day compromise, so a share near 1 mostly means a compromise
#   that has already ended. In the reference data the fraud rate is 0.41..0.51
#   for shares in (0.1, 0.75] and at most 0.04 above 0.75.
# * Customer counts and mean amounts, and the weekend and night flags, have no
#   one-way link to fraud in the simulator and are left free.
MONOTONE_CONSTRAINTS: dict[str, int] = {
    "TX_AMOUNT": 1,
    "TERMINAL_ID_RISK_1DAY_WINDOW": 1,
    "TERMINAL_ID_RISK_7DAY_WINDOW": 1,
}


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of the classifier.

    The defaults were set before looking at test-week results. The prequential
    job (:mod:`training.search`) replaces the fields it searches with the values
    chosen on the validation folds. The training week has about 600 frauds.
    Small trees with at least 50 rows a leaf and a low learning rate keep single
    frauds from getting leaves of their own.
    ``inputs`` names the model inputs in column order. It is not searched.
    ``num_threads`` is fixed rather than taken from the machine. With the same
    data and parameters, ``deterministic`` and row-wise histograms make LightGBM
    rebuild the same trees (LightGBM documents this for ``deterministic``).
    One thread is the default because OpenMP threads spin while they wait: on a
    2-core machine shared with other jobs, one fit of the reference training
    week took 1.3 s with one thread and 21..62 s with two. One and two threads
    gave the same predictions there (LightGBM 4.7).
    """

    n_estimators: int = 300
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_child_samples: int = 50
    # LightGBM's defaults: every feature for every tree, no L2 penalty.
    colsample_bytree: float = 1.0
    reg_lambda: float = 0.0
    seed: int = 0
    num_threads: int = 1
    constraints: Mapping[str, int] = field(
        default_factory=lambda: dict(MONOTONE_CONSTRAINTS)
    )
    inputs: tuple[str, ...] = MODEL_INPUTS

    def lightgbm_params(self) -> dict[str, Any]:
        """Return the keyword arguments of ``lightgbm.LGBMClassifier``."""
        return {
            "objective": "binary",
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "colsample_bytree": self.colsample_bytree,
            "reg_lambda": self.reg_lambda,
            "monotone_constraints": [
                self.constraints.get(name, 0) for name in self.inputs
            ],
            # LightGBM documents "basic" as possibly over-constraining; at this
            # size "advanced" adds a fraction of a second to a fit.
            "monotone_constraints_method": "advanced",
            "random_state": self.seed,
            "n_jobs": self.num_threads,
            "deterministic": True,
            "force_row_wise": True,
            "verbose": -1,
        }


def model_matrix(frame: pd.DataFrame, inputs: Sequence[str] = MODEL_INPUTS) -> Matrix:
    """Return the model inputs of each row as the float32 matrix ONNX takes.

    Parameters
    ----------
    frame : pandas.DataFrame of shape (n_rows, n_columns)
        Rows with every name of ``inputs`` as a column.
    inputs : sequence of str
        Column names in model input order.

    Returns
    -------
    numpy.ndarray of shape (n_rows, len(inputs)), dtype float32
    """
    return np.ascontiguousarray(frame[list(inputs)].to_numpy(dtype=np.float32))


def fit_classifier(
    x: Matrix, y: Labels, config: ModelConfig = ModelConfig()
) -> lgb.LGBMClassifier:
    """Fit the monotone-constrained LightGBM classifier.

    Parameters
    ----------
    x : numpy.ndarray of shape (n_rows, len(config.inputs)), dtype float32
    y : numpy.ndarray of shape (n_rows,)
        Labels, 1 for fraud.
    config : ModelConfig

    Returns
    -------
    lightgbm.LGBMClassifier

    Raises
    ------
    InputDataError
        If ``y`` does not contain both classes.
    ValueError
        If ``x`` does not have one column per name of ``config.inputs``.
    """
    if x.ndim != 2 or x.shape[1] != len(config.inputs):
        raise ValueError(
            f"x must have one column per model input ({len(config.inputs)}), "
            f"got shape {x.shape}."
        )
    classes = np.unique(y)
    if len(classes) != 2:
        raise InputDataError(
            f"training labels must contain both classes 0 and 1, "
            f"got {classes.tolist()}."
        )
    model = lgb.LGBMClassifier(**config.lightgbm_params())
    model.fit(x, y)
    return model


def fraud_probability(model: lgb.LGBMClassifier, x: Matrix) -> Vector:
    """Return LightGBM's fraud probability of each row, shape (n_rows,)."""
    probabilities = np.asarray(model.predict_proba(x), dtype=np.float64)
    fraud: Vector = probabilities[:, 1]
    return fraud


def choose_threshold(
    x: Matrix, y: Labels, config: ModelConfig = ModelConfig(), folds: int = 4
) -> float:
    """Choose the block threshold that maximizes F1 on out-of-fold predictions.

    Scores of a model on its own training rows are optimistic, so each training
    row is scored by a model fit on the other folds. Transactions whose fraud
    probability is at least the threshold are to be blocked.

    Parameters
    ----------
    x : numpy.ndarray of shape (n_rows, len(config.inputs)), dtype float32
    y : numpy.ndarray of shape (n_rows,)
    config : ModelConfig
    folds : int
        Number of stratified folds.

    Returns
    -------
    float
        The threshold, a probability in (0, 1].
    """
    out_of_fold = np.zeros(len(y), dtype=np.float64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    for fit_rows, score_rows in splitter.split(x, y):
        fold_model = fit_classifier(x[fit_rows], y[fit_rows], config)
        out_of_fold[score_rows] = fraud_probability(fold_model, x[score_rows])

    precision, recall, thresholds = precision_recall_curve(y, out_of_fold)
    # The last precision/recall pair has no threshold (recall 0 by definition).
    precision, recall = precision[:-1], recall[:-1]
    denominator = np.where(precision + recall > 0, precision + recall, 1.0)
    f1 = 2 * precision * recall / denominator
    best = int(np.argmax(f1))
    log.info(
        "block threshold %.4f: out-of-fold F1 %.3f, precision %.3f, recall %.3f",
        thresholds[best],
        f1[best],
        precision[best],
        recall[best],
    )
    return float(thresholds[best])


def to_onnx(
    model: lgb.LGBMClassifier, inputs: Sequence[str] = MODEL_INPUTS
) -> onnx.ModelProto:
    """Convert the classifier to ONNX with float32 input and no ZipMap.

    ONNX compares float32 inputs with float32 thresholds, and converting a double
    threshold to the nearest float32 can round it up past an input value, which
    would send that input left in ONNX and right in LightGBM. Rounding each
    threshold down to the largest float32 not above it keeps ``x <= t`` the same
    for every float32 ``x``.

    Parameters
    ----------
    model : lightgbm.LGBMClassifier
        A fitted classifier over ``inputs``.
    inputs : sequence of str
        Names of the model inputs in column order, stored in the metadata
        property ``feature_names``.

    Returns
    -------
    onnx.ModelProto
        Input ``features`` of shape (n, len(inputs)); outputs ``label`` and
        ``probabilities``.
    """
    booster = _round_thresholds_down(model.booster_)
    exported: onnx.ModelProto = convert_lightgbm(
        booster,
        initial_types=[(ONNX_INPUT_NAME, FloatTensorType([None, len(inputs)]))],
        zipmap=False,
    )
    _declare_batch_dimension(exported)
    onnx.helper.set_model_props(exported, {"feature_names": json.dumps(list(inputs))})
    onnx.checker.check_model(exported)
    return exported


def onnx_session(exported: onnx.ModelProto | bytes) -> ort.InferenceSession:
    """Open an onnxruntime session on the CPU for a model or its bytes."""
    data = exported if isinstance(exported, bytes) else exported.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def onnx_fraud_probability(session: ort.InferenceSession, x: Matrix) -> Vector:
    """Return the ONNX model's fraud probability of each row, shape (n_rows,)."""
    (probabilities,) = session.run(
        [ONNX_PROBABILITY_OUTPUT], {ONNX_INPUT_NAME: x.astype(np.float32, copy=False)}
    )
    fraud: Vector = np.asarray(probabilities[:, 1], dtype=np.float64)
    return fraud


def probability_differences(
    model: lgb.LGBMClassifier, session: ort.InferenceSession, x: Matrix
) -> Vector:
    """Return |ONNX - LightGBM| fraud probability of each row, shape (n_rows,)."""
    difference: Vector = np.abs(
        onnx_fraud_probability(session, x) - fraud_probability(model, x)
    )
    return difference


def check_onnx_parity(
    model: lgb.LGBMClassifier,
    session: ort.InferenceSession,
    x: Matrix,
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Compare ONNX and LightGBM fraud probabilities on every row.

    Parameters
    ----------
    model : lightgbm.LGBMClassifier
    session : onnxruntime.InferenceSession
        Session on the export of ``model``.
    x : numpy.ndarray of shape (n_rows, n_inputs), dtype float32
    tolerance : float
        Largest absolute difference accepted.

    Returns
    -------
    float
        The maximum absolute difference.

    Raises
    ------
    VerificationError
        If any row differs by more than ``tolerance``.
    """
    difference = probability_differences(model, session, x)
    max_difference = float(difference.max())
    if max_difference > tolerance:
        worst = int(difference.argmax())
        raise VerificationError(
            f"ONNX and LightGBM fraud probabilities must agree within {tolerance:g}, "
            f"got a difference of {max_difference:.3g} on row {worst} "
            f"({int((difference > tolerance).sum())} of {len(x)} rows exceed it)."
        )
    log.info(
        "ONNX matches LightGBM on %d rows, max abs diff %.3g", len(x), max_difference
    )
    return max_difference


@dataclass(frozen=True)
class MonotonicityReport:
    """Violations and grid steps checked, per constrained feature of the ONNX model."""

    violations: dict[str, int]
    steps: dict[str, int]

    @property
    def total_violations(self) -> int:
        """Number of violations over all constrained features."""
        return sum(self.violations.values())


def count_monotonicity_violations(
    session: ort.InferenceSession,
    x: Matrix,
    constraints: Mapping[str, int] = MONOTONE_CONSTRAINTS,
    grid_size: int = 64,
    max_rows: int = 1000,
    tolerance: float = MONOTONICITY_TOLERANCE,
    seed: int = 0,
    inputs: Sequence[str] = MODEL_INPUTS,
) -> MonotonicityReport:
    """Count where the ONNX model's probability moves against a constraint.

    For each constrained feature, up to ``max_rows`` rows sampled from ``x`` keep
    their other inputs while the feature sweeps a grid: half its quantiles in
    ``x``, half evenly spaced from its minimum to its maximum. A violation is a
    step between neighbouring grid values where the probability moves against
    the constraint by more than ``tolerance``.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
    x : numpy.ndarray of shape (n_rows, len(inputs)), dtype float32
    constraints : Mapping[str, int]
        Direction per feature name, +1 or -1; features mapped to 0 are skipped.
    grid_size : int
        Number of grid values per feature, before duplicates are removed.
    max_rows : int
    tolerance : float
        Decrease of probability accepted as float32 rounding.
    seed : int
        Seed of the row sample.
    inputs : sequence of str
        Names of the columns of ``x``.

    Returns
    -------
    MonotonicityReport
    """
    rng = np.random.default_rng(seed)
    rows = x[rng.choice(len(x), size=min(max_rows, len(x)), replace=False)]
    violations: dict[str, int] = {}
    steps_checked: dict[str, int] = {}
    for name, direction in constraints.items():
        if direction == 0:
            continue
        column = list(inputs).index(name)
        grid = _sweep_grid(x[:, column], grid_size)
        batch = np.repeat(rows, len(grid), axis=0)
        batch[:, column] = np.tile(grid, len(rows))
        probability = onnx_fraud_probability(session, batch).reshape(len(rows), -1)
        steps = np.diff(probability, axis=1) * direction
        violations[name] = int((steps < -tolerance).sum())
        steps_checked[name] = int(steps.size)
    report = MonotonicityReport(violations, steps_checked)
    log.info(
        "monotonicity: %d violations in %d grid steps (%s)",
        report.total_violations,
        sum(steps_checked.values()),
        violations,
    )
    return report


def _sweep_grid(
    values: npt.NDArray[np.float32], grid_size: int
) -> npt.NDArray[np.float32]:
    quantiles = np.quantile(values, np.linspace(0.0, 1.0, grid_size // 2))
    even = np.linspace(values.min(), values.max(), grid_size - grid_size // 2)
    grid: npt.NDArray[np.float32] = np.unique(
        np.concatenate([quantiles, even]).astype(np.float32)
    )
    return grid


def _round_thresholds_down(booster: lgb.Booster) -> lgb.Booster:
    lines = []
    for line in booster.model_to_string().splitlines():
        if line.startswith("threshold="):
            line = "threshold=" + _float32_floor_text(line.removeprefix("threshold="))
        elif line.startswith("tree_sizes="):
            # Byte sizes of the trees as written; editing the thresholds changes
            # them, and LightGBM parses the trees one after another without it.
            continue
        lines.append(line)
    return lgb.Booster(model_str="\n".join(lines) + "\n")


def _float32_floor_text(values: str) -> str:
    exact = np.array(values.split(), dtype=np.float64)
    nearest = exact.astype(np.float32)
    rounded_up = nearest.astype(np.float64) > exact
    floor = np.where(rounded_up, np.nextafter(nearest, np.float32(-np.inf)), nearest)
    # repr of a float32 value widened to float64 reads back as the same value.
    return " ".join(repr(float(value)) for value in floor)


def _declare_batch_dimension(exported: onnx.ModelProto) -> None:
    # onnxmltools 1.16 declares the label output with a fixed size of 1, and
    # onnxruntime then logs a shape warning on every batch of more than one row.
    for output in exported.graph.output:
        first = output.type.tensor_type.shape.dim[0]
        first.ClearField("dim_value")
        first.dim_param = "N"

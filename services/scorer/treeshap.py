"""Exact path-dependent tree SHAP of a LightGBM model, by table lookup.

Tree SHAP gives each leaf's value to the features split on along the leaf's
path. Take a path whose distinct features form the set ``D`` of size ``d``.
Each feature ``j`` in ``D`` has a zero fraction ``z_j``, the share of training
rows that followed the path at its splits on ``j`` (a product of cover ratios).
It also has a one fraction ``o_j``, which is 1 when the row follows the path at
all of those splits and 0 otherwise. The contribution of feature ``k`` from leaf
value ``v`` is::

    v * (o_k - z_k) * sum over S in D \\ {k} of
        |S|! (d - |S| - 1)! / d! * prod(o_j, j in S) * prod(z_j, j not in S, j != k)

The zero fractions are fixed by the model, and the one fractions are bits, so a
path has ``2**d`` cases. :func:`build_tables` computes every case of every path
when the model loads. :meth:`PathTables.contributions` then explains a row with
a few array operations over all paths. For a 300-tree model with 15 leaves a
tree that took about 0.12 ms, against 0.45 ms for LightGBM's
``predict(pred_contrib=True)`` on one row (in process, one core of an AMD EPYC
under KVM).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from math import factorial
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

# A path splitting on more distinct features than this would need 2**d cases in
# its table, so LightGBM explains such models instead.
MAX_PATH_FEATURES = 16

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class UnsupportedTree(ValueError):
    """The model has a split or a path that the tables cannot represent."""


@dataclass(frozen=True)
class PathTables:
    """The paths of a model's leaves and their contributions in every case.

    An entry is one distinct feature of one path. A path's splits on that
    feature, all of the form ``x <= threshold`` taken left or right, bound it to
    ``low < x <= high``. The entries of a path are contiguous and in feature
    order, and entry ``k`` of a path is bit ``k`` of the path's case.
    """

    feature_count: int
    entry_feature: IntArray
    entry_low: FloatArray
    entry_high: FloatArray
    entry_bit: IntArray
    entry_path: IntArray
    entry_position: IntArray
    path_ends: IntArray  # one past each path's last entry
    path_offset: IntArray  # table index of each path's case 0
    path_size: IntArray  # distinct features of each path
    table: FloatArray = field(repr=False)

    def contributions(self, row: npt.ArrayLike) -> FloatArray:
        """Return each feature's contribution to the raw score (log-odds) of ``row``.

        ``row`` has one value per model input, in input order. The expected
        value (LightGBM's last ``pred_contrib`` column) is not included.
        """
        values = np.asarray(row, dtype=np.float64)
        # Splits whose missing type is None, the only ones built, read NaN as 0.
        values = np.where(np.isnan(values), 0.0, values)[self.entry_feature]
        satisfied = (values > self.entry_low) & (values <= self.entry_high)
        # Each path's case is the sum of its satisfied entries' bits.
        running = np.cumsum(satisfied * self.entry_bit)
        totals = running[self.path_ends - 1]
        cases = np.diff(totals, prepend=0)
        starts = self.path_offset + cases * self.path_size
        looked_up = self.table[starts[self.entry_path] + self.entry_position]
        return np.bincount(
            self.entry_feature, weights=looked_up, minlength=self.feature_count
        )


@dataclass
class _Path:
    """A leaf's value and, per distinct feature, its zero fraction and bounds."""

    value: float = 0.0
    zero_fraction: dict[int, float] = field(default_factory=dict)
    bounds: dict[int, tuple[float, float]] = field(default_factory=dict)

    def child(self, feature: int, ratio: float, threshold: float, left: bool) -> _Path:
        zero = dict(self.zero_fraction)
        zero[feature] = zero.get(feature, 1.0) * ratio
        bounds = dict(self.bounds)
        low, high = bounds.get(feature, (-np.inf, np.inf))
        bounds[feature] = (
            (low, min(high, threshold)) if left else (max(low, threshold), high)
        )
        return _Path(0.0, zero, bounds)


def build_tables(booster: lgb.Booster) -> PathTables:
    """Decompose ``booster``'s trees into paths and tabulate every case.

    Raises:
        UnsupportedTree: for a model with several trees per iteration, linear
            trees, a split that is not numerical or whose missing type is not
            None, a split without training rows, or a path with more than
            ``MAX_PATH_FEATURES`` distinct features.
    """
    model = booster.dump_model()
    if model.get("num_tree_per_iteration", 1) != 1:
        raise UnsupportedTree("the model has more than one tree per iteration")
    if any(tree.get("is_linear") for tree in model["tree_info"]):
        raise UnsupportedTree("the model has linear trees")
    paths = [
        path
        for tree in model["tree_info"]
        for path in _leaf_paths(tree["tree_structure"])
    ]
    return _tabulate(paths, booster.num_feature())


def _leaf_paths(root: dict[str, Any]) -> Iterator[_Path]:
    """Yield the path of every leaf below ``root`` that splits at least once."""
    stack = [(root, _Path())]
    while stack:
        node, path = stack.pop()
        if "split_feature" not in node:
            if path.bounds:
                path.value = float(node["leaf_value"])
                yield path
            continue
        _check_split(node)
        feature, threshold = int(node["split_feature"]), float(node["threshold"])
        count = float(node["internal_count"])
        for child, left in ((node["left_child"], True), (node["right_child"], False)):
            ratio = _row_count(child) / count
            stack.append((child, path.child(feature, ratio, threshold, left)))


def _check_split(node: dict[str, Any]) -> None:
    if node.get("decision_type") != "<=":
        raise UnsupportedTree(
            f"split type {node.get('decision_type')!r} is not numerical"
        )
    # With missing types Zero and NaN, some values take the default direction,
    # which no interval describes.
    if node.get("missing_type") != "None":
        raise UnsupportedTree(f"a split has missing type {node.get('missing_type')!r}")
    if float(node["internal_count"]) <= 0:
        raise UnsupportedTree("a split has no training rows to weigh its paths")


def _row_count(node: dict[str, Any]) -> float:
    return float(node["leaf_count"] if "leaf_count" in node else node["internal_count"])


def _tabulate(paths: list[_Path], feature_count: int) -> PathTables:
    entries: list[tuple[int, float, float, int, int, int]] = []
    path_ends, path_offset, path_size, tables = [], [], [], []
    offset = 0
    for number, table in enumerate(_case_tables(paths)):
        bounds = paths[number].bounds
        for position, feature in enumerate(sorted(bounds)):
            low, high = bounds[feature]
            entries.append((feature, low, high, 1 << position, number, position))
        path_ends.append(len(entries))
        path_offset.append(offset)
        path_size.append(len(bounds))
        tables.append(table.reshape(-1))
        offset += table.size

    columns = list(zip(*entries, strict=True)) if entries else [()] * 6
    feature, low, high, bit, path, position = columns
    return PathTables(
        feature_count=feature_count,
        entry_feature=np.asarray(feature, dtype=np.int64),
        entry_low=np.asarray(low, dtype=np.float64),
        entry_high=np.asarray(high, dtype=np.float64),
        entry_bit=np.asarray(bit, dtype=np.int64),
        entry_path=np.asarray(path, dtype=np.int64),
        entry_position=np.asarray(position, dtype=np.int64),
        path_ends=np.asarray(path_ends, dtype=np.int64),
        path_offset=np.asarray(path_offset, dtype=np.int64),
        path_size=np.asarray(path_size, dtype=np.int64),
        table=np.concatenate(tables) if tables else np.zeros(0),
    )


def _case_tables(paths: list[_Path]) -> list[FloatArray]:
    """Return, per path, its contributions in every case, shape ``(2**d, d)``.

    Paths with the same number of distinct features are computed together.
    """
    by_size: dict[int, list[int]] = {}
    for number, path in enumerate(paths):
        size = len(path.bounds)
        if size > MAX_PATH_FEATURES:
            raise UnsupportedTree(
                f"a path splits on {size} distinct features, more than "
                f"{MAX_PATH_FEATURES}"
            )
        by_size.setdefault(size, []).append(number)
    tables: list[FloatArray] = [np.zeros(0)] * len(paths)
    for numbers in by_size.values():
        zero = np.asarray(
            [
                [paths[n].zero_fraction[f] for f in sorted(paths[n].bounds)]
                for n in numbers
            ]
        )
        leaf_values = np.asarray([paths[n].value for n in numbers])
        computed = _contributions_by_case(zero, leaf_values)
        for n, table in zip(numbers, computed, strict=True):
            tables[n] = table
    return tables


def _contributions_by_case(zero: FloatArray, leaf_values: FloatArray) -> FloatArray:
    """Compute tree SHAP for paths of ``d`` features in each of the ``2**d`` cases.

    Args:
        zero: zero fractions, shape ``(paths, d)``.
        leaf_values: leaf values, shape ``(paths,)``.

    Returns:
        Contributions, shape ``(paths, 2**d, d)``. In case ``c``, ``o_j`` is bit
        ``j`` of ``c``.
    """
    size = zero.shape[1]
    cases = np.arange(2**size)
    # The one fraction o_j of each case, shape (2**d, d).
    one_fraction = ((cases[:, None] >> np.arange(size)) & 1).astype(np.float64)
    weights = np.asarray(
        [factorial(s) * factorial(size - s - 1) / factorial(size) for s in range(size)]
    )
    result = np.empty((zero.shape[0], cases.size, size))
    for k in range(size):
        # Coefficients of prod over j != k of (z_j + o_j t), by power of t.
        coefficients = np.zeros((zero.shape[0], cases.size, size))
        coefficients[:, :, 0] = 1.0
        for j in range(size):
            if j == k:
                continue
            shifted = np.zeros_like(coefficients)
            shifted[:, :, 1:] = coefficients[:, :, :-1] * one_fraction[None, :, j, None]
            coefficients = coefficients * zero[:, None, j, None] + shifted
        weighted = coefficients @ weights  # (paths, 2**d)
        result[:, :, k] = (
            leaf_values[:, None]
            * (one_fraction[None, :, k] - zero[:, None, k])
            * weighted
        )
    return result

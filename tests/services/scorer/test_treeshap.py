"""Tree SHAP by table lookup against LightGBM's own ``pred_contrib``."""

from __future__ import annotations

import logging

import lightgbm
import numpy as np
import numpy.typing as npt
import pytest

from fraudcore.features import MODEL_INPUTS
from services.scorer.explain import Explainer, checked_tables, probe_rows
from services.scorer.treeshap import UnsupportedTree, build_tables
from tests.services.scorer.conftest import ExplainedModel
from training.model import ModelConfig


def lightgbm_contributions(
    booster: lightgbm.Booster, rows: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    return np.asarray(booster.predict(rows, pred_contrib=True))[:, :-1]


def fit(
    features: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], **params: object
) -> lightgbm.Booster:
    settings = {"n_estimators": 40, "verbose": -1, "min_child_samples": 5} | params
    return lightgbm.LGBMClassifier(**settings).fit(features, labels).booster_


@pytest.fixture(scope="module")
def deep_booster() -> lightgbm.Booster:
    """A monotone model like the training job's, with deep trees that split on
    the same feature several times along a path."""
    rng = np.random.default_rng(11)
    features = rng.normal(size=(3000, len(MODEL_INPUTS))).astype(np.float32)
    risk = np.sin(3 * features[:, 0]) + features[:, 1] * features[:, 2] + features[:, 5]
    labels = (risk + rng.normal(scale=0.3, size=3000) > 0.5).astype(np.int64)
    config = ModelConfig(n_estimators=60, num_leaves=31, min_child_samples=5, seed=3)
    params = config.lightgbm_params() | {"verbose": -1}
    return lightgbm.LGBMClassifier(**params).fit(features, labels).booster_


def test_tables_match_lightgbm_on_probe_rows(deep_booster: lightgbm.Booster) -> None:
    rows = probe_rows(deep_booster, count=500)
    tables = build_tables(deep_booster)

    actual = np.stack([tables.contributions(row) for row in rows])

    np.testing.assert_allclose(
        actual, lightgbm_contributions(deep_booster, rows), rtol=0, atol=1e-9
    )


def test_tables_match_lightgbm_on_nan_rows(
    deep_booster: lightgbm.Booster,
) -> None:
    rng = np.random.default_rng(5)
    rows = rng.normal(scale=2.0, size=(300, len(MODEL_INPUTS))).astype(np.float32)
    rows[::7, 3] = np.nan
    rows[::5, 0] = 0.0
    tables = build_tables(deep_booster)

    actual = np.stack([tables.contributions(row) for row in rows])

    np.testing.assert_allclose(
        actual, lightgbm_contributions(deep_booster, rows), rtol=0, atol=1e-9
    )


def test_tables_cover_repeated_features(deep_booster: lightgbm.Booster) -> None:
    def features_on_paths(node: dict[str, object], seen: tuple[int, ...]) -> bool:
        if "split_feature" not in node:
            return len(seen) != len(set(seen))
        feature = int(node["split_feature"])  # type: ignore[call-overload]
        return any(
            features_on_paths(node[side], (*seen, feature))  # type: ignore[arg-type]
            for side in ("left_child", "right_child")
        )

    trees = deep_booster.dump_model()["tree_info"]

    assert any(features_on_paths(tree["tree_structure"], ()) for tree in trees)


def test_single_leaf_trees_give_zero_contributions() -> None:
    rng = np.random.default_rng(2)
    features = rng.normal(size=(50, 4)).astype(np.float32)
    labels = rng.integers(0, 2, size=50)
    booster = fit(features, labels, min_child_samples=1000, n_estimators=3)

    contributions = build_tables(booster).contributions(features[0])

    assert contributions.tolist() == [0.0, 0.0, 0.0, 0.0]


def nan_split_booster() -> lightgbm.Booster:
    """A model trained with missing values, so its splits have missing type NaN."""
    rng = np.random.default_rng(4)
    features = rng.normal(size=(400, 3)).astype(np.float32)
    features[::3, 0] = np.nan
    labels = (np.nan_to_num(features[:, 0]) + features[:, 1] > 0).astype(np.int64)
    return fit(features, labels)


def test_nan_missing_type_unsupported() -> None:
    booster = nan_split_booster()

    with pytest.raises(UnsupportedTree, match="missing type 'NaN'"):
        build_tables(booster)


def test_categorical_split_unsupported() -> None:
    rng = np.random.default_rng(6)
    features = np.column_stack(
        [rng.integers(0, 6, size=600), rng.normal(size=600)]
    ).astype(np.float32)
    labels = np.isin(features[:, 0], [1, 4]).astype(np.int64)
    model = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1, min_child_samples=5)
    booster = model.fit(features, labels, categorical_feature=[0]).booster_

    with pytest.raises(UnsupportedTree, match="not numerical"):
        build_tables(booster)


def test_unsupported_model_falls_back_to_lightgbm(
    caplog: pytest.LogCaptureFixture,
) -> None:
    booster = nan_split_booster()

    with caplog.at_level(logging.WARNING):
        tables = checked_tables(booster, "v1")

    assert tables is None
    assert "LightGBM computes its reasons" in caplog.text


def test_disagreeing_tables_fall_back_to_lightgbm(
    monkeypatch: pytest.MonkeyPatch,
    deep_booster: lightgbm.Booster,
    explained_model: ExplainedModel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    other = lightgbm.Booster(model_str=explained_model.lightgbm_text)
    other_tables = build_tables(other)
    monkeypatch.setattr(
        "services.scorer.explain.build_tables", lambda booster: other_tables
    )

    with caplog.at_level(logging.WARNING):
        tables = checked_tables(deep_booster, "v1")

    assert tables is None
    assert "differ from LightGBM" in caplog.text


def test_reasons_same_with_and_without_tables(
    explained_model: ExplainedModel,
) -> None:
    booster = lightgbm.Booster(model_str=explained_model.lightgbm_text)
    fast = Explainer(booster, checked_tables(booster, "v1"))
    slow = Explainer(booster)
    rng = np.random.default_rng(9)
    assert fast.tables is not None

    for values in rng.normal(size=(50, len(MODEL_INPUTS))):
        row = dict(zip(MODEL_INPUTS, (float(v) for v in values), strict=True))
        row["TX_AMOUNT"] = float(rng.uniform(0, 400))

        fast_reasons, slow_reasons = fast.reasons(row), slow.reasons(row)

        assert [r.feature for r in fast_reasons] == [r.feature for r in slow_reasons]
        assert [r.value for r in fast_reasons] == [r.value for r in slow_reasons]
        assert [r.contribution for r in fast_reasons] == pytest.approx(
            [r.contribution for r in slow_reasons], abs=1e-12
        )

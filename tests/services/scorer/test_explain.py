"""Reasons from the LightGBM text model and the check that it is the ONNX's model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import lightgbm
import numpy as np
import pytest

from fraudcore.features import MODEL_INPUTS
from services.scorer.errors import ModelLoadError
from services.scorer.explain import check_same_model, load_explainer, probe_rows
from services.scorer.model import open_model
from services.scorer.registry import load_registered_model
from tests.services.scorer.conftest import (
    ExplainedModel,
    register_model,
    train_explained_model,
)


def write_model(folder: Path, model: ExplainedModel, text: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    artifact = folder / "model.onnx"
    artifact.write_bytes(model.onnx)
    (folder / "lightgbm.txt").write_text(
        text if text is not None else model.lightgbm_text
    )
    return artifact


def test_matching_text_model_loads(
    tmp_path: Path, explained_model: ExplainedModel
) -> None:
    artifact = write_model(tmp_path / "v1", explained_model)
    onnx_model = open_model(explained_model.onnx, "v1", 0.5)

    explainer = load_explainer(artifact, onnx_model)

    assert explainer is not None
    assert explainer.booster.num_trees() == 30


def test_other_training_run_rejected(
    tmp_path: Path, explained_model: ExplainedModel
) -> None:
    other = train_explained_model(seed=8)
    artifact = write_model(tmp_path / "v1", explained_model, other.lightgbm_text)
    onnx_model = open_model(explained_model.onnx, "v1", 0.5)

    with pytest.raises(ModelLoadError, match="is not the model of ONNX version 'v1'"):
        load_explainer(artifact, onnx_model)


def test_missing_text_model_gives_no_explainer(
    tmp_path: Path, explained_model: ExplainedModel
) -> None:
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(explained_model.onnx)

    assert load_explainer(artifact, open_model(explained_model.onnx, "v1", 0.5)) is None


def test_probe_rows_straddle_thresholds(explained_model: ExplainedModel) -> None:
    booster = lightgbm.Booster(model_str=explained_model.lightgbm_text)

    rows = probe_rows(booster)

    assert rows.shape == (2048, len(MODEL_INPUTS))
    assert rows.dtype == np.float32
    # Several distinct amounts, because the trees split on TX_AMOUNT.
    assert len(np.unique(rows[:, 0])) > 5


def test_wrong_input_count_rejected(explained_model: ExplainedModel) -> None:
    rng = np.random.default_rng(3)
    narrow = lightgbm.LGBMClassifier(n_estimators=3, verbose=-1).fit(
        rng.normal(size=(100, 4)), rng.integers(0, 2, size=100)
    )
    onnx_model = open_model(explained_model.onnx, "v1", 0.5)

    with pytest.raises(ModelLoadError, match="has 4 inputs"):
        check_same_model(narrow.booster_, onnx_model, Path("lightgbm.txt"))


def test_reasons_are_top_positive_contributions(
    tmp_path: Path, explained_model: ExplainedModel
) -> None:
    artifact = write_model(tmp_path / "v1", explained_model)
    explainer = load_explainer(artifact, open_model(explained_model.onnx, "v1", 0.5))
    assert explainer is not None
    row = {name: 0.0 for name in MODEL_INPUTS}
    row |= {"TX_AMOUNT": 390.0, "TERMINAL_ID_RISK_1DAY_WINDOW": 2.5}

    reasons = explainer.reasons(row)

    contributions = explainer.booster.predict(
        np.asarray([list(row.values())], dtype=np.float32), pred_contrib=True
    )[0, :-1]
    top = sorted(range(len(MODEL_INPUTS)), key=lambda i: -contributions[i])[:3]
    expected = [MODEL_INPUTS[i] for i in top if contributions[i] > 0]
    assert [reason.feature for reason in reasons] == expected
    assert reasons[0].feature in {"TX_AMOUNT", "TERMINAL_ID_RISK_1DAY_WINDOW"}
    assert reasons[0].value == row[reasons[0].feature]
    assert all(reason.contribution > 0 for reason in reasons)
    assert len(reasons) <= 3


@pytest.mark.integration
def test_registry_loads_explainer_and_rules(
    store_dsn: str,
    tmp_path: Path,
    explained_model: ExplainedModel,
    registered_versions: list[str],
) -> None:
    rules = [
        {
            "name": "amount_cap",
            "feature": "TX_AMOUNT",
            "op": ">=",
            "value": 300,
            "decision": "review",
        }
    ]
    row = register_model(
        store_dsn,
        tmp_path,
        explained_model.onnx,
        lightgbm_text=explained_model.lightgbm_text,
        review_threshold=0.25,
        rules=rules,
    )
    registered_versions.append(row.version)

    served = asyncio.run(load_registered_model(store_dsn, row.version, tmp_path))

    assert served.explainer is not None
    assert served.review_threshold == 0.25
    assert [rule.name for rule in served.rules] == ["amount_cap"]

"""Tests of the classifier, its ONNX export, parity and monotonicity checks."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from fraudcore.features import MODEL_INPUTS
from training import model as classifier
from training.errors import InputDataError, VerificationError

SplitFrames = tuple[pd.DataFrame, pd.DataFrame]


def _synthetic(rows: int = 2000, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(rows, len(MODEL_INPUTS))).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.uniform(0, 1, rows) > 1.0).astype(np.int64)
    return x, y


SMALL = classifier.ModelConfig(n_estimators=20, min_child_samples=5)


def test_onnx_parity_on_reference_test_rows(
    reference_model: lgb.LGBMClassifier,
    reference_session: ort.InferenceSession,
    reference_split: SplitFrames,
) -> None:
    _, test = reference_split

    difference = classifier.check_onnx_parity(
        reference_model, reference_session, classifier.model_matrix(test)
    )

    assert difference <= classifier.PARITY_TOLERANCE


def test_onnx_parity_on_reference_training_rows(
    reference_model: lgb.LGBMClassifier,
    reference_session: ort.InferenceSession,
    reference_split: SplitFrames,
) -> None:
    train, _ = reference_split

    difference = classifier.check_onnx_parity(
        reference_model, reference_session, classifier.model_matrix(train)
    )

    assert difference <= classifier.PARITY_TOLERANCE


@pytest.mark.parametrize("feature", sorted(classifier.MONOTONE_CONSTRAINTS))
def test_onnx_monotone_along_constrained_feature(
    reference_session: ort.InferenceSession,
    reference_split: SplitFrames,
    feature: str,
) -> None:
    _, test = reference_split

    report = classifier.count_monotonicity_violations(
        reference_session,
        classifier.model_matrix(test),
        constraints={feature: classifier.MONOTONE_CONSTRAINTS[feature]},
        tolerance=0.0,
    )

    assert report.steps[feature] >= 10_000
    assert report.violations[feature] == 0


def test_monotonicity_check_finds_free_feature_violations(
    reference_session: ort.InferenceSession,
    reference_split: SplitFrames,
) -> None:
    _, test = reference_split

    # The 30-day terminal risk is left free because fraud falls at high values.
    report = classifier.count_monotonicity_violations(
        reference_session,
        classifier.model_matrix(test),
        constraints={"TERMINAL_ID_RISK_30DAY_WINDOW": 1},
    )

    assert report.total_violations > 0


def test_check_onnx_parity_other_model_raises(
    reference_session: ort.InferenceSession,
    reference_split: SplitFrames,
) -> None:
    train, test = reference_split
    other = classifier.fit_classifier(
        classifier.model_matrix(train), train["fraud"].to_numpy(), SMALL
    )

    with pytest.raises(VerificationError, match="must agree within 1e-05, got"):
        classifier.check_onnx_parity(
            other, reference_session, classifier.model_matrix(test)
        )


def test_fit_classifier_deterministic() -> None:
    x, y = _synthetic()

    first = classifier.fit_classifier(x, y, SMALL)
    second = classifier.fit_classifier(x, y, SMALL)

    assert np.array_equal(
        classifier.fraud_probability(first, x), classifier.fraud_probability(second, x)
    )


def test_fit_classifier_thread_count_keeps_model() -> None:
    x, y = _synthetic()
    two_threads = classifier.ModelConfig(
        n_estimators=20, min_child_samples=5, num_threads=2
    )

    one = classifier.fit_classifier(x, y, SMALL)
    two = classifier.fit_classifier(x, y, two_threads)

    assert np.array_equal(
        classifier.fraud_probability(one, x), classifier.fraud_probability(two, x)
    )


def test_fit_classifier_single_class_raises() -> None:
    x, _ = _synthetic(rows=50)

    with pytest.raises(InputDataError, match=r"both classes 0 and 1, got \[0\]"):
        classifier.fit_classifier(x, np.zeros(50, dtype=np.int64), SMALL)


def test_fit_classifier_applies_constraints() -> None:
    params = classifier.ModelConfig().lightgbm_params()

    constraints = dict(zip(MODEL_INPUTS, params["monotone_constraints"], strict=True))

    assert constraints["TX_AMOUNT"] == 1
    assert constraints["TERMINAL_ID_RISK_7DAY_WINDOW"] == 1
    assert constraints["TERMINAL_ID_RISK_30DAY_WINDOW"] == 0
    assert params["deterministic"] is True


def test_choose_threshold_is_probability() -> None:
    x, y = _synthetic()

    threshold = classifier.choose_threshold(x, y, SMALL)

    assert 0.0 < threshold <= 1.0


def test_to_onnx_interface() -> None:
    x, y = _synthetic()
    exported = classifier.to_onnx(classifier.fit_classifier(x, y, SMALL))
    session = classifier.onnx_session(exported)

    (features,) = session.get_inputs()
    outputs = {output.name: output.shape for output in session.get_outputs()}
    metadata = session.get_modelmeta().custom_metadata_map

    assert features.name == classifier.ONNX_INPUT_NAME
    assert features.shape == [None, len(MODEL_INPUTS)]
    assert features.type == "tensor(float)"
    assert outputs == {"label": ["N"], "probabilities": ["N", 2]}
    assert json.loads(metadata["feature_names"]) == list(MODEL_INPUTS)


def test_to_onnx_label_matches_half_probability() -> None:
    x, y = _synthetic()
    session = classifier.onnx_session(
        classifier.to_onnx(classifier.fit_classifier(x, y, SMALL))
    )

    labels, probabilities = session.run(None, {classifier.ONNX_INPUT_NAME: x})

    assert labels.shape == (len(x),)
    assert np.array_equal(labels, (probabilities[:, 1] > 0.5).astype(np.int64))

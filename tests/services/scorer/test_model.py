"""Opening ONNX artifacts and single-row inference."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from fraudcore.features import MODEL_INPUTS
from fraudcore.segments import SEGMENTED_MODEL_INPUTS
from services.scorer.errors import ModelLoadError
from services.scorer.model import open_model
from tests.services.scorer.conftest import train_onnx_model


def test_open_model_finds_probability_output(onnx_artifact: bytes) -> None:
    model = open_model(onnx_artifact, "v1", 0.4)

    assert model.input_name == "input"
    assert model.output_name == "probabilities"
    assert model.version == "v1"
    assert model.threshold == 0.4


def test_predict_returns_fraud_column(onnx_artifact: bytes) -> None:
    model = open_model(onnx_artifact, "v1", 0.5)
    row = np.linspace(-1.0, 2.0, len(MODEL_INPUTS)).astype(np.float32)
    session = ort.InferenceSession(onnx_artifact, providers=["CPUExecutionProvider"])
    (expected,) = session.run(["probabilities"], {"input": row[None, :]})

    probability = model.predict(row.tolist())

    assert probability == float(expected[0, 1])
    assert 0.0 < probability < 1.0


def test_session_uses_one_thread(onnx_artifact: bytes) -> None:
    model = open_model(onnx_artifact, "v1", 0.5)

    options = model.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1


def test_zipmap_export_rejected() -> None:
    artifact = train_onnx_model(zipmap=True)

    with pytest.raises(ModelLoadError, match="zipmap=False"):
        open_model(artifact, "zipped", 0.5)


def test_wrong_input_width_rejected() -> None:
    artifact = train_onnx_model(width=len(MODEL_INPUTS) - 1)

    with pytest.raises(ModelLoadError, match=r"expected tensor\(float\) \[n, 20\]"):
        open_model(artifact, "narrow", 0.5)


def test_width_follows_model_inputs(onnx_artifact: bytes) -> None:
    segmented = train_onnx_model(width=len(SEGMENTED_MODEL_INPUTS))

    model = open_model(segmented, "segmented", 0.5, SEGMENTED_MODEL_INPUTS)

    assert model.inputs == SEGMENTED_MODEL_INPUTS
    with pytest.raises(ModelLoadError, match=r"expected tensor\(float\) \[n, 21\]"):
        open_model(onnx_artifact, "unsegmented", 0.5, SEGMENTED_MODEL_INPUTS)
    with pytest.raises(ModelLoadError, match=r"expected tensor\(float\) \[n, 20\]"):
        open_model(segmented, "segmented", 0.5)


def test_garbage_artifact_rejected() -> None:
    with pytest.raises(ModelLoadError, match="'junk' is not a valid ONNX model"):
        open_model(b"not an onnx file", "junk", 0.5)

"""ONNX model of the scorer: a float32 row in model input order to P(fraud)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from fraudcore.features import MODEL_INPUTS
from services.scorer.errors import ModelLoadError

# Name that onnxmltools gives the class-probability output of a classifier.
PROBABILITY_OUTPUT = "probabilities"
FRAUD_CLASS_COLUMN = 1


@dataclass(frozen=True)
class ScoringModel:
    """A loaded model version, its decision threshold and its input names."""

    version: str
    threshold: float
    session: ort.InferenceSession
    input_name: str
    output_name: str
    inputs: tuple[str, ...] = MODEL_INPUTS

    def predict(self, features: Sequence[float]) -> float:
        """Return the fraud probability of one row of features in model input order."""
        row = np.asarray([features], dtype=np.float32)
        (probabilities,) = self.session.run([self.output_name], {self.input_name: row})
        return float(probabilities[0, FRAUD_CLASS_COLUMN])

    def predict_rows(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Return the fraud probability of each row, shape (n_rows,)."""
        (probabilities,) = self.session.run(
            [self.output_name], {self.input_name: rows.astype(np.float32, copy=False)}
        )
        return np.asarray(probabilities[:, FRAUD_CLASS_COLUMN], dtype=np.float64)


def open_model(
    artifact: bytes,
    version: str,
    threshold: float,
    inputs: tuple[str, ...] = MODEL_INPUTS,
) -> ScoringModel:
    """Open an ONNX artifact over ``inputs`` for single-row scoring on one thread.

    One thread keeps the inference of a single row from competing with the event
    loop and with other workers for cores.

    Raises:
        ModelLoadError: if onnxruntime cannot open the artifact or its input or
            output does not have the expected shape.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = ort.InferenceSession(
            artifact, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own unexported exception types
        raise ModelLoadError(
            f"model {version!r} is not a valid ONNX model: {exc}"
        ) from exc

    return ScoringModel(
        version=version,
        threshold=threshold,
        session=session,
        input_name=_find_input(session, version, len(inputs)),
        output_name=_find_probability_output(session, version),
        inputs=inputs,
    )


def _find_input(session: ort.InferenceSession, version: str, width: int) -> str:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelLoadError(f"model {version!r} has {len(inputs)} inputs, expected 1")
    (single,) = inputs
    if not _is_row_tensor(single, width):
        raise ModelLoadError(
            f"model {version!r} input {single.name!r} is {single.type} {single.shape}, "
            f"expected tensor(float) [n, {width}]"
        )
    return str(single.name)


def _find_probability_output(session: ort.InferenceSession, version: str) -> str:
    """Find the [n, 2] float probability tensor: by name first, then by shape.

    A model exported with a ZipMap (a sequence of maps) has no such output.
    """
    candidates = [o for o in session.get_outputs() if _is_probability_tensor(o)]
    for output in candidates:
        if output.name == PROBABILITY_OUTPUT:
            return str(output.name)
    if len(candidates) == 1:
        return str(candidates[0].name)
    found = ", ".join(f"{o.name}: {o.type} {o.shape}" for o in session.get_outputs())
    raise ModelLoadError(
        f"model {version!r} has no single [n, 2] float probability output "
        f"(outputs: {found}); export it with zipmap=False"
    )


def _is_row_tensor(node: ort.NodeArg, expected_width: int) -> bool:
    if node.type != "tensor(float)" or len(node.shape) != 2:
        return False
    width = node.shape[1]
    # A symbolic dimension is a string or None, and only a fixed one is checked.
    return width == expected_width or not isinstance(width, int)


def _is_probability_tensor(output: ort.NodeArg) -> bool:
    if output.type != "tensor(float)" or len(output.shape) != 2:
        return False
    classes = output.shape[1]
    # A symbolic dimension is a string or None, and only a fixed one is checked.
    return classes == 2 or not isinstance(classes, int)

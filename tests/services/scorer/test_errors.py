"""One-sentence error details."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError

from services.scorer.errors import InvalidRequest, describe_request_errors
from services.scorer.routes.score import parse_transaction


def test_request_errors_name_first_field() -> None:
    exc = RequestValidationError(
        [
            {"loc": ("query", "limit"), "msg": "Field required", "type": "missing"},
            {"loc": ("query", "page"), "msg": "Field required", "type": "missing"},
        ]
    )

    assert describe_request_errors(exc) == (
        "field 'query.limit': Field required (1 more problem)."
    )


def test_request_errors_without_details() -> None:
    assert describe_request_errors(RequestValidationError([])) == "request is invalid."


def test_nan_detected_after_multibyte_text() -> None:
    body = '{"customer_id": "Jürgen", "amount": NaN}'.encode()

    with pytest.raises(
        InvalidRequest, match="contains NaN or Infinity at character 36"
    ):
        parse_transaction(body)

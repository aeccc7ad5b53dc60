"""One-sentence error details."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request

from services.scorer.errors import (
    ClientDisconnected,
    InvalidRequest,
    describe_request_errors,
)
from services.scorer.routes.score import parse_transaction, read_body


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


def test_client_disconnect_is_client_error() -> None:
    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)

    with pytest.raises(ClientDisconnected, match="client disconnected") as caught:
        asyncio.run(read_body(request, 100))
    assert caught.value.status_code == 499

"""``POST /score``: fraud probability and decision for one transaction."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from fraudcore.schema import TransactionRecord, describe_validation_error
from services.scorer.auth import API_KEY_HEADER
from services.scorer.errors import (
    ClientDisconnected,
    InvalidRequest,
    RequestTooLarge,
    ScorerError,
    scorer_error_response,
)
from services.scorer.runtime import Runtime, RuntimeDep
from services.scorer.schemas import ErrorOut, ScoreOut
from services.scorer.scoring import score_transaction

router = APIRouter(tags=["score"])

# The body is parsed here rather than by FastAPI: Python's json module accepts NaN
# and Infinity, which are not JSON, while orjson rejects them. The schema is
# still published in OpenAPI.
REQUEST_BODY_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": TransactionRecord.model_json_schema()}
        },
    }
}

NON_FINITE_LITERALS = ("NaN", "Infinity")
JSON_TYPE_NAMES = {
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


async def read_body(request: Request, max_bytes: int) -> bytes:
    """Read the request body, stopping as soon as it exceeds ``max_bytes``.

    Raises:
        RequestTooLarge: if the body is longer than ``max_bytes``.
        ClientDisconnected: if the client closed the connection first.
    """
    too_large = RequestTooLarge(f"request body is larger than {max_bytes} bytes.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        # Clients that time out while the server is overloaded disconnect. A
        # traceback per request would add several milliseconds of CPU each.
        raise ClientDisconnected(
            "the client disconnected before sending the whole body."
        ) from None
    return b"".join(chunks)


def authenticate(request: Request, runtime: Runtime) -> None:
    """Check the request's API key when the settings require one.

    Raises:
        AuthenticationFailed: if the key is missing or unknown.
        RevokedApiKey: if the key has been revoked.
        ApiKeysUnavailable: if the keys have not been loaded yet.
    """
    if runtime.settings.require_api_key:
        runtime.api_keys.check(request.headers.get(API_KEY_HEADER))


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse a JSON object, rejecting NaN and Infinity.

    Raises:
        InvalidRequest: with a one-sentence reason when the body is not a JSON
            object.
    """
    if not body.strip():
        raise InvalidRequest("request body is empty, but a JSON object is required.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(_describe_json_error(body, exc)) from None
    if not isinstance(payload, dict):
        kind = JSON_TYPE_NAMES.get(type(payload), type(payload).__name__)
        raise InvalidRequest(f"request body must be a JSON object, got {kind}.")
    return payload


def parse_transaction(body: bytes) -> TransactionRecord:
    """Parse and validate a JSON transaction.

    Raises:
        InvalidRequest: with a one-sentence reason when the body is not a valid
            transaction.
    """
    payload = parse_json_object(body)
    try:
        return TransactionRecord.model_validate(payload)
    except ValidationError as exc:
        raise InvalidRequest(describe_validation_error(exc)) from None


def _describe_json_error(body: bytes, exc: orjson.JSONDecodeError) -> str:
    # orjson reports the position in characters, not bytes.
    rest = body.decode(errors="replace")[exc.pos :]
    if rest.startswith(NON_FINITE_LITERALS):
        return (
            f"request body contains NaN or Infinity at character {exc.pos}, "
            "which JSON does not allow."
        )
    return f"request body is not valid JSON: {exc.msg} at character {exc.pos}."


@router.post(
    "/score",
    response_model=ScoreOut,
    responses={
        401: {"model": ErrorOut},
        403: {"model": ErrorOut},
        409: {"model": ErrorOut},
        413: {"model": ErrorOut},
        422: {"model": ErrorOut},
        503: {"model": ErrorOut},
    },
    openapi_extra=REQUEST_BODY_SCHEMA,
)
async def score(request: Request, runtime: RuntimeDep) -> Response:
    """Score one transaction and return its fraud probability and decision."""
    started = time.perf_counter()
    arrived = asyncio.get_running_loop().time()
    duration = runtime.metrics.request_duration
    try:
        authenticate(request, runtime)
        body = await read_body(request, runtime.settings.max_body_bytes)
        record = parse_transaction(body)
    except ScorerError:
        duration.observe(time.perf_counter() - started)
        raise
    # Admitted only now, so that a client slow to send its body takes no place.
    runtime.admission.enter()
    try:
        result = await score_transaction(runtime, record, arrived)
    finally:
        runtime.admission.leave()
        duration.observe(time.perf_counter() - started)
    return Response(result, media_type="application/json")


class DirectScoreRoute:
    """ASGI middleware that serves ``POST /score`` without FastAPI's router.

    In a profile of the scorer at 600 req/s (py-spy, FastAPI 0.165), route
    matching, dependency resolution and the endpoint wrappers took about 40% of
    the CPU of each score request. This middleware calls :func:`score` directly,
    with the same error responses. The route stays on the router for the OpenAPI
    schema and for apps built without the middleware. Unexpected exceptions
    propagate to the app's server-error handler, as they do from the route.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != "/score"
            or scope["method"] != "POST"
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await score(request, request.app.state.runtime)
        except ScorerError as exc:
            response = scorer_error_response(request, exc)
        await response(scope, receive, send)

"""Errors of the scoring service. Each class carries its HTTP status and metric kind.

:func:`install_error_handlers` maps them, FastAPI's request validation errors and
any unexpected exception to a JSON body ``{"detail": "<one sentence>"}``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

logger = logging.getLogger(__name__)


class ScorerError(Exception):
    """Base class of the errors that the service returns to its callers."""

    status_code = 500
    kind = "internal"
    headers: dict[str, str] | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRequest(ScorerError):
    """The request body is not a valid transaction."""

    status_code = 422
    kind = "invalid_request"


class RequestTooLarge(ScorerError):
    """The request body is larger than the configured maximum."""

    status_code = 413
    kind = "request_too_large"


class ClientDisconnected(ScorerError):
    """The client closed the connection before it sent the whole body.

    Status 499 is nginx's for this case. The client never reads the response,
    so the point is to end the request without a logged traceback.
    """

    status_code = 499
    kind = "client_disconnected"


class ModelUnavailable(ScorerError):
    """No model is loaded yet, so the service cannot score."""

    status_code = 503
    kind = "model_unavailable"


class ModelLoadError(ScorerError):
    """The registered model could not be found, verified or opened."""

    status_code = 503
    kind = "model_load"


class AuthenticationFailed(ScorerError):
    """The request has no X-API-Key header, or its key is not known."""

    status_code = 401
    kind = "unauthorized"


class RevokedApiKey(ScorerError):
    """The request's API key has been revoked."""

    status_code = 403
    kind = "forbidden"


class Overloaded(ScorerError):
    """The worker is handling as many requests as it is allowed to at once."""

    status_code = 503
    kind = "overloaded"
    headers = {"Retry-After": "1"}


class ApiKeysUnavailable(ScorerError):
    """The API keys have not been loaded from PostgreSQL yet."""

    status_code = 503
    kind = "api_keys_unavailable"


class TransactionNotFound(ScorerError):
    """A label names a transaction that this service never scored."""

    status_code = 404
    kind = "transaction_not_found"


class IdempotencyConflict(ScorerError):
    """A transaction id was sent again with a different body."""

    status_code = 409
    kind = "idempotency_conflict"


class LabelStoreUnavailable(ScorerError):
    """PostgreSQL, which records labels, did not respond."""

    status_code = 503
    kind = "label_store_unavailable"


def describe_request_errors(exc: RequestValidationError) -> str:
    """Summarize FastAPI's validation errors as one sentence naming the first field.

    The sentence has the form of :func:`fraudcore.schema.describe_validation_error`,
    which takes a pydantic ``ValidationError`` rather than FastAPI's error list.
    """
    errors = list(exc.errors())
    if not errors:
        return "request is invalid."
    first = errors[0]
    location = ".".join(str(part) for part in first.get("loc", ())) or "request"
    message = str(first.get("msg", "is invalid")).removeprefix("Value error, ")
    extra = len(errors) - 1
    suffix = f" ({extra} more problem{'s' if extra > 1 else ''})" if extra else ""
    return f"field '{location}': {message}{suffix}."


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn exceptions into ``{"detail": ...}`` bodies."""
    app.add_exception_handler(ScorerError, _handle_scorer_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(Exception, _handle_unexpected_error)


def _count_error(request: Request, kind: str) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(kind=kind).inc()


def scorer_error_response(request: Request, exc: ScorerError) -> JSONResponse:
    """Count ``exc`` by its kind and return its ``{"detail": ...}`` response."""
    _count_error(request, exc.kind)
    return JSONResponse(
        {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
    )


async def _handle_scorer_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ScorerError)
    return scorer_error_response(request, exc)


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    _count_error(request, InvalidRequest.kind)
    return JSONResponse({"detail": describe_request_errors(exc)}, status_code=422)


async def _handle_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises the exception after this response, so the server logs
    # its traceback. The caller gets no exception text, which could leak internals.
    _count_error(request, ScorerError.kind)
    logger.error("unexpected %s on %s", type(exc).__name__, request.url.path)
    return JSONResponse({"detail": "internal error."}, status_code=500)

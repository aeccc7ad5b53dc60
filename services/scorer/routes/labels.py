"""``POST /labels``: chargeback and review outcomes of scored transactions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import ValidationError

from fraudcore.schema import describe_validation_error
from services.scorer.errors import InvalidRequest
from services.scorer.labels import record_label
from services.scorer.routes.score import authenticate, parse_json_object, read_body
from services.scorer.runtime import RuntimeDep
from services.scorer.schemas import ErrorOut, LabelIn, LabelOut

router = APIRouter(tags=["labels"])


@router.post(
    "/labels",
    response_model=LabelOut,
    responses={
        status: {"model": ErrorOut} for status in (401, 403, 404, 409, 413, 422, 503)
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": LabelIn.model_json_schema()}},
        }
    },
)
async def post_label(request: Request, runtime: RuntimeDep) -> LabelOut:
    """Record the fraud outcome of a scored transaction and publish it to Kafka."""
    authenticate(request, runtime)
    body = await read_body(request, runtime.settings.max_body_bytes)
    try:
        label = LabelIn.model_validate(parse_json_object(body))
    except ValidationError as exc:
        raise InvalidRequest(describe_validation_error(exc)) from None
    return await record_label(runtime, label)

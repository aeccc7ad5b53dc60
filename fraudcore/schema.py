"""Wire schemas of the records on the Kafka topics and of the scoring request.

Identifiers are strings on the wire. Integer identifiers are accepted and turned
into their decimal text, which loses nothing; every other type is rejected.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fraudcore.timeutil import parse_timestamp_ms

RecordT = TypeVar("RecordT", bound=BaseModel)


def _identifier(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a string or an integer, got a boolean")
    if isinstance(value, int):
        return str(value)
    return value


Identifier = Annotated[
    str, BeforeValidator(_identifier), Field(min_length=1, max_length=128)
]


def _check_amount(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a finite number >= 0, got {value!r}")
    return value


def _check_timestamp(value: str) -> str:
    try:
        parse_timestamp_ms(value)
    except ValueError as exc:
        raise ValueError(f"must be an ISO-8601 timestamp: {exc}") from None
    return value


class TransactionRecord(BaseModel):
    """A card transaction, as produced to the transactions topic and sent to /score.

    ``user_id`` and ``merchant_id`` are accepted as aliases of ``customer_id`` and
    ``terminal_id``, the names many payment systems use.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    transaction_id: Identifier
    customer_id: Identifier = Field(
        validation_alias=AliasChoices("customer_id", "user_id")
    )
    terminal_id: Identifier = Field(
        validation_alias=AliasChoices("terminal_id", "merchant_id")
    )
    amount: float
    timestamp: str
    device_id: Identifier | None = None

    @model_validator(mode="before")
    @classmethod
    def _reject_conflicting_aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, alias in (
                ("customer_id", "user_id"),
                ("terminal_id", "merchant_id"),
            ):
                if name in data and alias in data:
                    raise ValueError(f"give either {name} or {alias}, not both")
        return data

    _amount = field_validator("amount")(_check_amount)
    _timestamp = field_validator("timestamp")(_check_timestamp)

    @property
    def event_ms(self) -> int:
        """Event time in epoch milliseconds."""
        return parse_timestamp_ms(self.timestamp)


class LabelRecord(BaseModel):
    """The fraud label of one transaction, known at ``label_timestamp``.

    The event time of a label is the moment it became known (a chargeback or a
    review outcome), not the time of the transaction it labels.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    transaction_id: Identifier
    customer_id: Identifier
    terminal_id: Identifier
    transaction_timestamp: str
    label_timestamp: str
    fraud: Annotated[int, Field(ge=0, le=1)]

    _transaction_timestamp = field_validator("transaction_timestamp")(_check_timestamp)
    _label_timestamp = field_validator("label_timestamp")(_check_timestamp)

    @property
    def event_ms(self) -> int:
        """Event time (when the label became known) in epoch milliseconds."""
        return parse_timestamp_ms(self.label_timestamp)


def encode(record: BaseModel) -> bytes:
    """Serialize a record to the JSON bytes carried on Kafka."""
    return orjson.dumps(record.model_dump(exclude_none=True))


def decode_transaction(raw: bytes) -> TransactionRecord:
    """Parse and validate transaction JSON bytes.

    Raises:
        ValueError: with a one-sentence reason when the bytes are not a valid record.
    """
    return _decode(TransactionRecord, raw)


def decode_label(raw: bytes) -> LabelRecord:
    """Parse and validate label JSON bytes.

    Raises:
        ValueError: with a one-sentence reason when the bytes are not a valid record.
    """
    return _decode(LabelRecord, raw)


def _decode(model: type[RecordT], raw: bytes) -> RecordT:
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"record is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"record must be a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """Summarize a pydantic error as one sentence naming the first bad field."""
    first = exc.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "body"
    message = first["msg"].removeprefix("Value error, ")
    extra = len(exc.errors()) - 1
    suffix = f" ({extra} more problem{'s' if extra > 1 else ''})" if extra else ""
    return f"field '{location}': {message}{suffix}."

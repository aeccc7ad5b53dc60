"""Record schemas: what is accepted, and the one-sentence reason for what is not."""

from __future__ import annotations

import pytest

from fraudcore.schema import decode_label, decode_transaction, encode

VALID = (
    b'{"transaction_id": 7, "user_id": 3, "merchant_id": "m-1", "amount": 12,'
    b' "timestamp": "2018-07-25 00:00:29"}'
)


def test_transaction_aliases_and_integer_ids():
    record = decode_transaction(VALID)
    assert record.transaction_id == "7"
    assert record.customer_id == "3"
    assert record.terminal_id == "m-1"
    assert record.amount == 12.0


def test_transaction_naive_timestamp_is_utc():
    record = decode_transaction(VALID)
    assert record.event_ms == 1532476829000


def test_transaction_round_trip_uses_canonical_names():
    encoded = encode(decode_transaction(VALID))
    assert b'"customer_id":"3"' in encoded
    assert decode_transaction(encoded) == decode_transaction(VALID)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "not valid JSON"),
        (b"[1]", "must be a JSON object, got list"),
        (VALID.replace(b"12,", b'"12",'), "field 'amount': Input should be a valid"),
        (VALID.replace(b"12,", b"-1,"), "finite number >= 0"),
        (VALID.replace(b"12,", b"NaN,"), "not valid JSON"),
        (VALID.replace(b"2018-07-25 00:00:29", b"yesterday"), "ISO-8601"),
        (VALID.replace(b"2018-07-25", b"1899-07-25"), "outside 2000-01-01"),
        (VALID.replace(b'"user_id": 3,', b""), "field 'customer_id': Field required"),
        (VALID.replace(b"7,", b"true,"), "got a boolean"),
        (VALID.replace(b"}", b', "customer_id": 4}'), "either customer_id or user_id"),
        (VALID.replace(b"}", b', "extra": 1}'), "field 'extra'"),
    ],
)
def test_transaction_rejects_invalid(raw, reason):
    with pytest.raises(ValueError, match=reason):
        decode_transaction(raw)


def test_label_rejects_fraud_outside_zero_one():
    raw = (
        b'{"transaction_id": "1", "customer_id": "2", "terminal_id": "3",'
        b' "transaction_timestamp": "2018-07-25T00:00:00Z",'
        b' "label_timestamp": "2018-08-01T00:00:00Z", "fraud": 2}'
    )
    with pytest.raises(ValueError, match="field 'fraud'"):
        decode_label(raw)

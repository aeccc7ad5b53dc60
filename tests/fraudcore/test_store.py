"""Sorted-set member layout of the online store: round trips and strict decoding."""

from __future__ import annotations

import pytest

from fraudcore.features import CustomerEvent, DeviceEvent
from fraudcore.store import (
    InvalidMemberError,
    decode_customer_member,
    decode_customer_members,
    decode_device_members,
    encode_customer_member,
    encode_device_member,
)


def test_customer_member_round_trip_keeps_ids_and_amount():
    event = CustomerEvent(1_700_000_000_123, 'tx|"1"]', 0.1 + 0.2, "term|,\\x")
    member = encode_customer_member(event)

    decoded = decode_customer_member(member.encode(), float(event.event_ms))

    assert decoded == event
    assert decoded.amount == 0.1 + 0.2


def test_customer_member_integer_amount_decodes_as_float():
    event = CustomerEvent(5, "tx", 12, "t")  # type: ignore[arg-type]
    decoded = decode_customer_members([encode_customer_member(event).encode(), b"5"])

    assert decoded == [(5, "tx", 12.0, "t")]
    assert isinstance(decoded[0][2], float)


def test_device_member_round_trip():
    events = [DeviceEvent(1, "tx|1", "c|1"), DeviceEvent(2, "tx-2", 'c"2')]
    flat: list[str | bytes | float] = []
    for event in events:
        flat += [encode_device_member(event).encode(), str(event.event_ms).encode()]

    assert decode_device_members(flat) == [tuple(event) for event in events]


@pytest.mark.parametrize(
    "member",
    [
        b"old-tx|12.5",  # the layout before terminal ids
        b'["tx", "t"]',
        b'["tx", "t", 1.5, "extra"]',
        b'["tx", "t", "1.5"]',
        b'["tx", 7, 1.5]',
        b'{"transaction_id": "tx"}',
        b"",
    ],
)
def test_customer_member_other_layout_rejected(member: bytes):
    with pytest.raises(InvalidMemberError, match="not "):
        decode_customer_members([member, b"1"])


@pytest.mark.parametrize(
    "member", [b"tx|c", b'["tx", "c", "x"]', b'["tx", 3]', b'["tx", "t", 1.5]']
)
def test_device_member_other_layout_rejected(member: bytes):
    with pytest.raises(InvalidMemberError, match="rebuild the store"):
        decode_device_members([member, b"1"])

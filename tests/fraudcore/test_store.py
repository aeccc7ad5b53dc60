"""Sorted-set member layout of the online store: round trips and strict decoding."""

from __future__ import annotations

import pytest

from fraudcore.features import CustomerEvent, DeviceEvent, TerminalLabel
from fraudcore.store import (
    InvalidMemberError,
    decode_customer_member,
    decode_customer_members,
    decode_device_members,
    decode_label_members,
    encode_customer_member,
    encode_device_member,
    encode_label_member,
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


@pytest.mark.parametrize("score", [b"1712400000000.5", b"1e+17", b"inf"])
def test_customer_member_fractional_score_rejected(score: bytes):
    member = encode_customer_member(CustomerEvent(1, "tx", 1.5, "t")).encode()

    with pytest.raises(InvalidMemberError, match="rebuild the store"):
        decode_customer_members([member, score])


def test_customer_member_of_another_type_rejected():
    with pytest.raises(InvalidMemberError, match="not a JSON array"):
        decode_customer_members([1.5, b"1"])


@pytest.mark.parametrize(
    "member", [b"tx|c", b'["tx", "c", "x"]', b'["tx", 3]', b'["tx", "t", 1.5]']
)
def test_device_member_other_layout_rejected(member: bytes):
    with pytest.raises(InvalidMemberError, match="rebuild the store"):
        decode_device_members([member, b"1"])


def test_label_members_round_trip():
    labels = [TerminalLabel(7, "tx|with|bars", 1), TerminalLabel(9, "tx-2", 0)]
    flat: list[str | bytes | float] = []
    for label in labels:
        flat += [encode_label_member(label).encode(), str(label.label_ms).encode()]

    assert decode_label_members(flat) == [tuple(label) for label in labels]


@pytest.mark.parametrize(
    ("member", "score"),
    [
        (b"tx", b"1"),
        (b"tx|2", b"1"),
        (b"tx|", b"1"),
        (b"|1", b"1"),
        (b"\xff|1", b"1"),
        (b"tx|1", b"1.5"),
        (1.5, b"1"),
    ],
)
def test_label_member_other_layout_rejected(member: bytes | float, score: bytes):
    with pytest.raises(InvalidMemberError, match="transaction_id\\|fraud"):
        decode_label_members([member, score])

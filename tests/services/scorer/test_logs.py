"""Throttled warnings and pseudonymous ids."""

from __future__ import annotations

import logging

import pytest

from services.scorer import logs
from services.scorer.logs import DecisionLog, ThrottledWarning


def test_throttled_warning_counts_dropped_repeats(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    target = logging.getLogger("tests.throttled")
    warning = ThrottledWarning(target, interval_seconds=10.0)
    caplog.set_level(logging.WARNING, logger="tests.throttled")

    warning.warn("lookup failed: %s", "first")
    clock[0] = 105.0
    warning.warn("lookup failed: %s", "second")
    warning.warn("lookup failed: %s", "third")
    clock[0] = 111.0
    warning.warn("lookup failed: %s", "fourth")

    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "lookup failed: first",
        "lookup failed: fourth (2 similar warnings dropped)",
    ]


def test_pseudonym_is_keyed_and_stable() -> None:
    first = DecisionLog(b"key-one")
    second = DecisionLog(b"key-two")

    assert first.pseudonym("42") == first.pseudonym("42")
    assert first.pseudonym("42") != first.pseudonym("43")
    assert first.pseudonym("42") != second.pseudonym("42")
    assert len(first.pseudonym("42")) == 16


def test_missing_key_warns_and_draws_random_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="services.scorer.logs")

    first = DecisionLog(None)
    second = DecisionLog(None)

    assert first.pseudonym("42") != second.pseudonym("42")
    assert "FRAUD_LOG_HASH_KEY is not set" in caplog.text

"""Tests of the model lifecycle CLI and its shadow guard against real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from fraudcore.decisions import DECISIONS_SCHEMA
from fraudcore.features import MODEL_INPUTS
from fraudcore.segments import SEGMENTED_MODEL_INPUTS
from training.models import (
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_TRANSITION,
    main,
)
from training.registry import ModelRecord, get_model, register_model

CREATED = datetime(2018, 8, 15, 6, 0, tzinfo=UTC)


@pytest.fixture
def registry_dsn(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """DSN of a schema of its own with v1 in production and candidate v2.

    ``FRAUD_PG_DSN`` points the CLI at it.
    """
    schema = f"models_{uuid.uuid4().hex[:8]}"
    dsn = make_conninfo(pg_dsn, options=f"-c search_path={schema}")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    with psycopg.connect(dsn) as conn:
        conn.execute(DECISIONS_SCHEMA)
        conn.commit()
        register_model(conn, _record("v1", stage="production"), by="trainer")
        register_model(conn, _record("v2"), by="trainer")
    monkeypatch.setenv("FRAUD_PG_DSN", dsn)
    yield dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def _record(version: str, **changes: Any) -> ModelRecord:
    fields: dict[str, Any] = {
        "version": version,
        "artifact_path": f"/models/{version}/model.onnx",
        "artifact_sha256": "0" * 64,
        "feature_names": MODEL_INPUTS,
        "metrics": {"auc_roc": 0.88, "average_precision": 0.61},
        "threshold": 0.27,
        "created_at": CREATED,
    }
    return ModelRecord(**(fields | changes))


def stage_of(dsn: str, version: str) -> str:
    with psycopg.connect(dsn) as conn:
        return get_model(conn, version).stage


def seed_shadow_results(
    dsn: str, challenger: str, production: str, rows: int, challenger_better: bool
) -> None:
    """Store paired scores and labels; the better model ranks frauds higher."""
    rng = np.random.default_rng(3)
    fraud = rng.random(rows) < 0.1
    fraud[:5] = True
    good = np.where(fraud, 0.6, 0.4) + rng.normal(scale=0.1, size=rows)
    poor = rng.random(rows)
    challenger_scores, production_scores = (
        (good, poor) if challenger_better else (poor, good)
    )
    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        ids = [f"tx-{i}" for i in range(rows)]
        cursor.executemany(
            "INSERT INTO shadow_scores VALUES (%s, %s, %s, now())",
            [
                (t, challenger, float(p))
                for t, p in zip(ids, challenger_scores, strict=True)
            ],
        )
        cursor.executemany(
            "INSERT INTO scored_transactions VALUES (%s, 'd', 'c', 't', 0, %s, %s, "
            "'allow', '{}', now())",
            [
                (t, production, float(p))
                for t, p in zip(ids, production_scores, strict=True)
            ],
        )
        cursor.executemany(
            "INSERT INTO transaction_labels (transaction_id, source, fraud, label_ms) "
            "VALUES (%s, 'chargeback', %s, 0)",
            [(t, int(f)) for t, f in zip(ids, fraud, strict=True)],
        )


@pytest.mark.integration
def test_list_and_show(registry_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == EXIT_OK
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:2] == ["version", "stage"]
    assert [line.split()[:2] for line in listing[1:]] == [
        ["v2", "candidate"],
        ["v1", "production"],
    ]

    assert main(["show", "v1"]) == EXIT_OK
    show_output = capsys.readouterr().out
    assert "stage: production" in show_output
    assert "registered -> candidate by trainer" in show_output
    assert "candidate -> production by trainer" in show_output


@pytest.mark.integration
def test_unknown_version_exit_code(
    registry_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", "v9"]) == EXIT_NOT_FOUND
    assert "'v9' is not registered" in capsys.readouterr().err
    assert main(["promote", "v9", "--to", "shadow"]) == EXIT_NOT_FOUND


@pytest.mark.integration
def test_invalid_transition_exit_code(
    registry_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["promote", "v1", "--to", "shadow"]) == EXIT_TRANSITION
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "cannot go from production to shadow" in error

    assert main(["promote", "v1", "--to", "archived"]) == EXIT_TRANSITION
    assert "cannot be archived alone" in capsys.readouterr().err
    assert stage_of(registry_dsn, "v1") == "production"


@pytest.mark.integration
@pytest.mark.parametrize("share", ["0", "100.5", "-3", "ten"])
def test_share_out_of_range_exit_code(
    registry_dsn: str, capsys: pytest.CaptureFixture[str], share: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["promote", "v2", "--to", "canary", "--share", share])

    assert exited.value.code == EXIT_INVALID
    assert "--share" in capsys.readouterr().err
    assert stage_of(registry_dsn, "v2") == "candidate"


@pytest.mark.integration
def test_canary_without_share_exit_code(
    registry_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["promote", "v2", "--to", "canary"]) == EXIT_INVALID
    assert "a canary needs a share" in capsys.readouterr().err


@pytest.mark.integration
def test_canary_records_share_and_actor(
    registry_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["promote", "v2", "--to", "canary", "--share", "12.5", "--by", "ann"])

    assert code == EXIT_OK
    assert "candidate -> canary (12.5%) by ann" in capsys.readouterr().out
    with psycopg.connect(registry_dsn) as conn:
        record = get_model(conn, "v2")
    assert record.canary_share == 12.5
    assert record.promoted_by == "ann"


@pytest.mark.integration
def test_guard_rejects_without_shadow_results(
    registry_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["promote", "v2", "--to", "shadow"]) == EXIT_OK

    assert main(["promote", "v2", "--to", "production"]) == EXIT_REJECTED
    error = capsys.readouterr().err
    assert "only 0 labelled shadow results" in error
    assert "--force" in error
    assert stage_of(registry_dsn, "v2") == "shadow"


@pytest.mark.integration
def test_force_overrides_guard(
    registry_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["promote", "v2", "--to", "production", "--force"]) == EXIT_OK

    output = capsys.readouterr().out
    assert "v1: production -> archived" in output
    assert "forced past the guard" in output
    assert stage_of(registry_dsn, "v2") == "production"
    assert stage_of(registry_dsn, "v1") == "archived"


@pytest.mark.integration
def test_guard_rejects_worse_challenger(
    registry_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_shadow_results(registry_dsn, "v2", "v1", 400, challenger_better=False)

    assert main(["promote", "v2", "--to", "production"]) == EXIT_REJECTED
    error = capsys.readouterr().err
    assert "average precision of 'v2'" in error
    assert "on 400 labelled shadow transactions" in error
    assert stage_of(registry_dsn, "v2") == "candidate"


@pytest.mark.integration
def test_guard_accepts_better_challenger(registry_dsn: str) -> None:
    seed_shadow_results(registry_dsn, "v2", "v1", 400, challenger_better=True)

    assert main(["promote", "v2", "--to", "production"]) == EXIT_OK
    assert stage_of(registry_dsn, "v2") == "production"


@pytest.mark.integration
def test_guard_needs_enough_labels(
    registry_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_shadow_results(registry_dsn, "v2", "v1", 50, challenger_better=True)

    code = main(["promote", "v2", "--to", "production", "--min-labelled", "100"])

    assert code == EXIT_REJECTED
    assert "only 50 labelled shadow results" in capsys.readouterr().err


@pytest.mark.integration
def test_rollback_command(
    registry_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rollback"]) == EXIT_TRANSITION
    assert "nothing to roll back to" in capsys.readouterr().err
    assert main(["promote", "v2", "--to", "production", "--force"]) == EXIT_OK

    assert main(["rollback", "--by", "ann", "--reason", "alerts"]) == EXIT_OK

    output = capsys.readouterr().out
    assert "v2: production -> archived by ann (alerts)" in output
    assert stage_of(registry_dsn, "v1") == "production"
    assert stage_of(registry_dsn, "v2") == "archived"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--margin", "1.5"], "--margin must be in"),
        (["--min-labelled", "0"], "--min-labelled must be at least 1"),
        (["--min-frauds", "0"], "--min-frauds must be at least 1"),
    ],
)
def test_guard_option_out_of_range(
    capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["promote", "v2", "--to", "production", *arguments])

    assert exited.value.code == EXIT_INVALID
    assert message in capsys.readouterr().err


@pytest.mark.integration
def test_segment_thresholds_command(
    registry_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(registry_dsn) as conn:
        segmented = _record(
            "v3", feature_names=SEGMENTED_MODEL_INPUTS, segmentation_version="s1"
        )
        register_model(conn, segmented, by="trainer")
    command = ["thresholds", "v3", "--segment", "2"]

    assert main([*command, "--review", "0.1", "--block", "0.4"]) == EXIT_OK
    assert (
        main(["thresholds", "v3", "--segment", "0", "--review", "0", "--block", "0"])
        == EXIT_OK
    )
    with psycopg.connect(registry_dsn) as conn:
        stored = get_model(conn, "v3").segment_thresholds
    assert stored == {
        "2": {"review": 0.1, "block": 0.4},
        "0": {"review": 0.0, "block": 0.0},
    }

    assert main([*command, "--clear"]) == EXIT_OK
    with psycopg.connect(registry_dsn) as conn:
        assert get_model(conn, "v3").segment_thresholds == {
            "0": {"review": 0.0, "block": 0.0}
        }
    capsys.readouterr()


@pytest.mark.integration
def test_segment_thresholds_invalid_exit_codes(
    registry_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = ["--review", "0.1", "--block", "0.4"]

    assert main(["thresholds", "v1", "--segment", "2", *pair]) == EXIT_INVALID
    assert "without the customer segment" in capsys.readouterr().err
    assert main(["thresholds", "v9", "--segment", "2", *pair]) == EXIT_NOT_FOUND
    assert "'v9' is not registered" in capsys.readouterr().err
    inverted = ["--review", "0.5", "--block", "0.4"]
    assert main(["thresholds", "v1", "--segment", "2", *inverted]) == EXIT_INVALID
    assert "review <= block" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["thresholds", "v1", "--segment", "2", "--review", "0.1"])
    assert exited.value.code == EXIT_INVALID

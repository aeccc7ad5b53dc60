"""API-key administration: ``python -m services.scorer.keys create|revoke|list``.

Reads ``FRAUD_PG_DSN`` like the scorer. ``create`` prints the new key once; only
its sha256 is stored, so a lost key cannot be recovered, only revoked and
replaced. Scorers reject a revoked key within ``FRAUD_API_KEY_REFRESH_SECONDS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import psycopg

from fraudcore.decisions import DECISIONS_SCHEMA
from services.scorer.auth import key_sha256, new_api_key
from services.scorer.settings import ScorerSettings

CONNECT_TIMEOUT_SECONDS = 10


def create_key(conn: psycopg.Connection[Any], name: str) -> tuple[str, str]:
    """Store a new key under ``name`` and return its id and the key itself."""
    key_id, key = new_api_key()
    conn.execute(
        "INSERT INTO api_keys (key_id, name, key_sha256) VALUES (%s, %s, %s)",
        (key_id, name, key_sha256(key)),
    )
    return key_id, key


def revoke_key(conn: psycopg.Connection[Any], key_id: str) -> bool:
    """Revoke a key; return False when no active key has that id."""
    cursor = conn.execute(
        "UPDATE api_keys SET revoked_at = now() "
        "WHERE key_id = %s AND revoked_at IS NULL",
        (key_id,),
    )
    return cursor.rowcount == 1


def list_keys(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Return ``(key_id, name, created_at, revoked_at)`` of every key, oldest first."""
    cursor = conn.execute(
        "SELECT key_id, name, created_at, revoked_at FROM api_keys "
        "ORDER BY created_at, key_id"
    )
    return cursor.fetchall()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m services.scorer.keys", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="who or what uses the key")
    revoke = commands.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id", help="id shown by `create` and `list`")
    commands.add_parser("list", help="list key ids, names and revocation times")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one key command against ``FRAUD_PG_DSN``."""
    args = parse_args(argv)
    settings = ScorerSettings()
    with psycopg.connect(
        settings.pg_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
    ) as conn:
        conn.execute(DECISIONS_SCHEMA)
        if args.command == "create":
            key_id, key = create_key(conn, args.name)
            print(f"created key {key_id} for {args.name!r}; it is shown only once:")
            print(key)
        elif args.command == "revoke":
            if not revoke_key(conn, args.key_id):
                print(f"no active key has the id {args.key_id!r}.", file=sys.stderr)
                return 1
            print(f"revoked key {args.key_id}")
        else:
            for key_id, name, created_at, revoked_at in list_keys(conn):
                state = "active" if revoked_at is None else f"revoked {revoked_at}"
                print(f"{key_id}  {created_at:%Y-%m-%d %H:%M:%S%z}  {state}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

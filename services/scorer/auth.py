"""API keys: the ``X-API-Key`` header of ``/score`` and ``/labels``.

A key is ``fsk_<key id>_<secret>`` with 32 random bytes of secret, and only its
sha256 is stored, in ``api_keys``. A fast hash is enough because the keys are
random, not chosen by people, and a 256-bit secret cannot be found from its
hash by trying guesses. A slow password hash (scrypt, bcrypt) protects guessable
secrets, and here it would add tens of milliseconds to every request. The key
id is not secret: it names the key in ``python -m services.scorer.keys list``.

Each worker keeps every key's hash in memory and reloads them every
``api_key_refresh_seconds``, so a check costs no round trip and a revocation
takes effect within that interval. When a reload fails the previous keys stay
in force.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from dataclasses import dataclass, field

from psycopg_pool import AsyncConnectionPool

from services.scorer.errors import (
    ApiKeysUnavailable,
    AuthenticationFailed,
    RevokedApiKey,
)
from services.scorer.feature_store import PG_FAILURES
from services.scorer.logs import ThrottledWarning

logger = logging.getLogger(__name__)

API_KEY_HEADER = "x-api-key"
KEY_PREFIX = "fsk"
KEY_ID_BYTES = 6
SECRET_BYTES = 32
FIRST_LOAD_RETRY_SECONDS = 0.5

SELECT_KEYS_SQL = "SELECT key_sha256, key_id, revoked_at IS NOT NULL FROM api_keys"


def new_api_key() -> tuple[str, str]:
    """Return a new key id and the full key that contains it."""
    key_id = secrets.token_hex(KEY_ID_BYTES)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"


def key_sha256(key: str) -> str:
    """Return the hex sha256 under which a key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class KeySet:
    """Hashes of the active and of the revoked keys, mapped to their key ids."""

    active: dict[str, str] = field(default_factory=dict)
    revoked: dict[str, str] = field(default_factory=dict)


class ApiKeys:
    """Checks ``X-API-Key`` headers against the keys loaded from PostgreSQL."""

    def __init__(
        self, pg_pool: AsyncConnectionPool, refresh_seconds: float, timeout: float
    ) -> None:
        self._pg_pool = pg_pool
        self._refresh_seconds = refresh_seconds
        self._timeout = timeout
        self._keys: KeySet | None = None
        self._warning = ThrottledWarning(logger)

    @property
    def loaded(self) -> bool:
        """Whether the keys have been loaded at least once."""
        return self._keys is not None

    def check(self, header: str | None) -> str:
        """Return the key id of a valid key.

        Raises:
            AuthenticationFailed: if the header is missing or the key unknown.
            RevokedApiKey: if the key has been revoked.
            ApiKeysUnavailable: if the keys have never been loaded.
        """
        if not header:
            raise AuthenticationFailed(
                "the X-API-Key header is missing; send a key made with "
                "`python -m services.scorer.keys create`."
            )
        keys = self._keys
        if keys is None:
            raise ApiKeysUnavailable(
                "the API keys are not loaded yet because PostgreSQL did not "
                "respond; retry when GET /readyz returns 200."
            )
        digest = key_sha256(header)
        key_id = keys.active.get(digest)
        if key_id is not None:
            return key_id
        if digest in keys.revoked:
            raise RevokedApiKey("the API key has been revoked; use another key.")
        raise AuthenticationFailed("the API key in X-API-Key is not valid.")

    async def refresh(self) -> bool:
        """Reload the keys and return whether it worked."""
        try:
            async with asyncio.timeout(self._timeout):
                async with self._pg_pool.connection(timeout=self._timeout) as conn:
                    cursor = await conn.execute(SELECT_KEYS_SQL)
                    rows = await cursor.fetchall()
        except PG_FAILURES as exc:
            self._warning.warn("reloading API keys failed, keeping the last: %r", exc)
            return False
        keys = KeySet()
        for digest, key_id, revoked in rows:
            (keys.revoked if revoked else keys.active)[digest] = key_id
        self._keys = keys
        return True

    async def run(self) -> None:
        """Reload the keys every ``refresh_seconds`` until cancelled.

        Until the first load succeeds, it retries every ``FIRST_LOAD_RETRY_SECONDS``.
        """
        while True:
            await self.refresh()
            if self.loaded:
                await asyncio.sleep(self._refresh_seconds)
            else:
                await asyncio.sleep(
                    min(self._refresh_seconds, FIRST_LOAD_RETRY_SECONDS)
                )

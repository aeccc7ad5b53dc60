"""Redis client of the scorer: one shared connection, commands pipelined as called.

Every request of a worker uses the same connection. A command is queued for
writing when it is called, and the commands of one event-loop iteration go out
in a single write. Redis replies in the order of the commands (RESP), so each
command waits for its reply in a first-in, first-out queue.

A caller that gives up on a command (its timeout expired, or it was cancelled)
keeps its place in that queue: the reply is read when it comes and dropped, and
the connection stays in use. redis-py's asyncio client closes a connection
whose command was cancelled while reading the reply, and under load the
reconnects cost more than the lookups they served.

When the oldest unanswered command has waited longer than ``stale_seconds``,
Redis is taken to be hung: the connection is closed, every command waiting on it
fails with :class:`redis.exceptions.ConnectionError`, and the next command
connects again. A failed connection attempt is not repeated for
``retry_seconds``; commands fail at once meanwhile, so that an outage costs
requests no connection attempt each. A connection that closes before its first
reply counts as a failed attempt too.

Each command must get exactly one reply, or every later reply would go to the
wrong caller. So a command without arguments is rejected, and so are those that
change how Redis replies (:data:`NOT_ONE_REPLY` and ``CLIENT REPLY``).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

Argument = str | bytes | int | float

# Returned by hiredis.Reader.gets() while a reply is incomplete; RESP2 replies
# are never this object.
_INCOMPLETE = object()
DEFAULT_PORT = 6379
CLOSE_TIMEOUT_SECONDS = 1.0
# Commands after which Redis sends no reply, several, or replies unasked;
# CLIENT REPLY is one too.
NOT_ONE_REPLY = frozenset(
    {"MONITOR", "PSUBSCRIBE", "PSYNC", "SSUBSCRIBE", "SUBSCRIBE", "SYNC"}
)


@dataclass(frozen=True)
class RedisAddress:
    """Connection target and credentials: a TCP host and port, or a Unix socket."""

    host: str | None
    port: int
    path: str | None
    db: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """Parse a ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL.

        The database comes from the path (``/0``) or a ``db`` query parameter.

        Raises:
            ValueError: if the scheme, the database or a query parameter is not
                supported.
        """
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        unsupported = sorted(set(query) - {"db"})
        if unsupported:
            raise ValueError(
                f"Redis URL parameters {unsupported} are not supported; only 'db' "
                "is, besides the user, password, host, port and path."
            )
        db_text = query.get("db", [""])[0]
        if parts.scheme in ("redis", "rediss"):
            db_text = parts.path.lstrip("/") or db_text
            host, port, path = parts.hostname or "127.0.0.1", parts.port, None
        elif parts.scheme == "unix":
            host, port, path = None, None, unquote(parts.path)
        else:
            raise ValueError(
                f"Redis URL scheme {parts.scheme!r} is not supported; use "
                "redis://, rediss:// or unix://."
            )
        if not (db_text or "0").isdigit():
            raise ValueError(f"Redis database {db_text!r} is not a number.")
        return cls(
            host=host,
            port=port or DEFAULT_PORT,
            path=path,
            db=int(db_text or 0),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "rediss",
        )


def pack_command(args: Sequence[Argument]) -> bytes:
    """Encode one command as a RESP array of bulk strings.

    Raises:
        ValueError: if ``args`` is empty or names a command of
            :data:`NOT_ONE_REPLY`.
        TypeError: if an argument is not text, bytes or a number.
    """
    if not args:
        raise ValueError("A Redis command needs at least its name.")
    name = _upper_text(args[0])
    if name in NOT_ONE_REPLY or (
        name == "CLIENT" and len(args) > 1 and _upper_text(args[1]) == "REPLY"
    ):
        raise ValueError(
            f"Redis command {name} does not get exactly one reply, which this "
            "client needs to match replies to commands."
        )
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int | float) and not isinstance(arg, bool):
            data = repr(arg).encode()
        else:
            raise TypeError(f"Redis argument {arg!r} is not text, bytes or a number.")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _upper_text(arg: Argument) -> str:
    text = arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)
    return text.upper()


class _Connection(asyncio.Protocol):
    """One connection's transport, reply parser and queue of waiting commands."""

    def __init__(self, on_lost: Any) -> None:
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(
            replyError=ResponseError, notEnoughData=_INCOMPLETE
        )
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._outgoing: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: Exception | None = None
        self.replies = 0
        # Done once the transport is closed and its socket released.
        self.lost: asyncio.Future[None] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue a packed command; the future gets its reply.

        On a closed connection the future has failed already.
        """
        future: asyncio.Future[Any] = self._loop.create_future()
        if self.closed:
            future.set_exception(
                self.error or RedisConnectionError("the Redis connection is closed")
            )
            return future
        self._waiting.append((future, self._loop.time()))
        if not self._outgoing:
            self._loop.call_soon(self._write)
        self._outgoing.append(command)
        return future

    def oldest_wait(self) -> float:
        """Return how long the oldest unanswered command has waited, in seconds."""
        if not self._waiting:
            return 0.0
        return self._loop.time() - self._waiting[0][1]

    def pending(self) -> int:
        """Return the number of commands waiting for their replies."""
        return len(self._waiting)

    def _write(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(outgoing))

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        reader = self._reader
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.close(RedisConnectionError(f"invalid reply from Redis: {exc}"))
                return
            if reply is _INCOMPLETE:
                return
            if not self._waiting:
                unexpected = f"Redis sent a reply to no pending command: {reply!r}"
                self.close(RedisConnectionError(unexpected))
                return
            future, _ = self._waiting.popleft()
            self.replies += 1
            if future.done():
                continue  # its caller gave up
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_waiting(
            RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        )
        if not self.lost.done():
            self.lost.set_result(None)
        self._on_lost(self)

    def close(self, error: Exception) -> None:
        """Close the connection and fail every waiting command with ``error``.

        Data still in the transport's buffer is dropped: its commands have
        failed, and a plain close would hold the socket until a hung Redis
        read it.
        """
        self._fail_waiting(error)
        if self.transport is not None:
            self.transport.abort()

    def _fail_waiting(self, error: Exception) -> None:
        if not self.closed:
            self.closed = True
            self.error = error
        self._outgoing.clear()
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
                # A caller that gave up in the meantime never retrieves it.
                future.exception()


def _retrieve_outcome(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Script:
    """A Lua script run with EVALSHA, and with EVAL when Redis lacks it."""

    def __init__(self, client: MultiplexedRedis, text: str) -> None:
        self._client = client
        self._text = text.encode()
        self.sha = hashlib.sha1(self._text).hexdigest()

    async def __call__(
        self, keys: Sequence[Argument] = (), args: Sequence[Argument] = ()
    ) -> Any:
        """Run the script; a restarted or flushed Redis gets it sent again."""
        tail = [len(keys), *keys, *args]
        try:
            return await self._client.execute("EVALSHA", self.sha, *tail)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # EVAL also caches the script, so the next EVALSHA finds it.
        return await self._client.execute("EVAL", self._text, *tail)


class MultiplexedRedis:
    """Redis client that pipelines all commands over one shared connection.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL.
        connect_timeout_seconds: Maximum wait for a connection, handshake
            included.
        stale_seconds: Maximum wait of the oldest unanswered command before the
            connection is closed as hung.
        retry_seconds: Wait after a failed connection attempt before the next.
        max_pending: Commands that may wait for replies at once; more fail.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_seconds: float = 1.0,
        stale_seconds: float = 2.0,
        retry_seconds: float = 0.1,
        max_pending: int = 100_000,
    ) -> None:
        self.address = RedisAddress.from_url(url)
        self._connect_timeout = connect_timeout_seconds
        self._stale = stale_seconds
        self._retry = retry_seconds
        self._max_pending = max_pending
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._failed_at = float("-inf")
        self._failure: Exception | None = None
        self._closed = False

    def register_script(self, text: str) -> Script:
        """Return a callable that runs the Lua script ``text``."""
        return Script(self, text)

    async def execute(self, *args: Argument) -> Any:
        """Send one command and return its reply.

        Raises:
            redis.exceptions.ConnectionError: if Redis cannot be reached or the
                connection was lost or closed as hung before the reply.
            redis.exceptions.ResponseError: if Redis replied with an error.
            ValueError: if the command is empty or gets other than one reply.
        """
        command = pack_command(args)
        connection = await self._connection_for(1)
        return await connection.send(command)

    async def execute_many(self, commands: Iterable[Sequence[Argument]]) -> list[Any]:
        """Send several commands in one write and return their replies in order.

        Raises:
            redis.exceptions.RedisError: the first failure among the commands,
                after all of them have a reply or failed.
            ValueError: if a command is empty or gets other than one reply.
        """
        packed = [pack_command(command) for command in commands]
        connection = await self._connection_for(len(packed))
        futures = [connection.send(command) for command in packed]
        replies = await asyncio.gather(*futures, return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return list(replies)

    async def ping(self) -> bool:
        """Return True when Redis replies to PING."""
        return bool(await self.execute("PING") == b"PONG")

    async def get(self, key: str) -> bytes | None:
        """Return the value of ``key``, or None when it does not exist."""
        value: bytes | None = await self.execute("GET", key)
        return value

    async def aclose(self) -> None:
        """Close the connection and wait until its socket is released.

        Commands still waiting fail, and so do the commands sent afterwards.
        """
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        connection = self._connection
        if connection is not None:
            self._connection = None
            connection.close(RedisConnectionError("the Redis client was closed"))
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await connection.lost

    async def _connection_for(self, commands: int) -> _Connection:
        """Return the open connection, with room for ``commands`` more."""
        if self._closed:
            raise RedisConnectionError("the Redis client is closed")
        connection = self._connection
        if connection is None or connection.closed or self._is_stale(connection):
            connection = await self._connect()
        if connection.pending() + commands > self._max_pending:
            raise RedisConnectionError(
                f"{connection.pending()} Redis commands are waiting for replies "
                f"already, and at most {self._max_pending} may"
            )
        return connection

    def _is_stale(self, connection: _Connection) -> bool:
        if connection.oldest_wait() <= self._stale:
            return False
        connection.close(
            RedisConnectionError(
                f"Redis did not reply within {self._stale:g} s; reconnecting"
            )
        )
        return True

    async def _connect(self) -> _Connection:
        """Return an open connection, sharing one attempt among all callers."""
        loop = asyncio.get_running_loop()
        if self._connecting is None:
            if loop.time() - self._failed_at < self._retry:
                raise RedisConnectionError(
                    f"connecting to Redis failed {self._retry:g} s ago or less: "
                    f"{self._failure!r}"
                )
            self._connecting = loop.create_task(self._open())
            # Read the outcome even when every caller gave up waiting for it.
            self._connecting.add_done_callback(_retrieve_outcome)
        task = self._connecting
        try:
            # A caller that times out must not cancel the attempt others wait for.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # aclose() cancelled the attempt, not this caller's task.
                raise RedisConnectionError("the Redis client was closed") from None
            raise

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                connection = await self._handshake()
        except (OSError, TimeoutError, ResponseError, RedisConnectionError) as exc:
            self._failed_at = loop.time()
            self._failure = exc
            raise RedisConnectionError(f"connecting to Redis failed: {exc!r}") from exc
        finally:
            self._connecting = None
        self._connection = connection
        return connection

    async def _handshake(self) -> _Connection:
        loop = asyncio.get_running_loop()
        address = self.address
        connection: _Connection
        if address.path is not None:
            _, connection = await loop.create_unix_connection(
                lambda: _Connection(self._lost), address.path
            )
        else:
            context = ssl.create_default_context() if address.tls else None
            _, connection = await loop.create_connection(
                lambda: _Connection(self._lost),
                address.host,
                address.port,
                ssl=context,
            )
        try:
            if address.password is not None:
                # The one-argument form also works on Redis before 6.0.
                credentials = [address.password]
                if address.username is not None:
                    credentials.insert(0, address.username)
                await connection.send(pack_command(["AUTH", *credentials]))
            if address.db:
                await connection.send(pack_command(["SELECT", address.db]))
        except BaseException:
            connection.close(RedisConnectionError("the Redis handshake failed"))
            raise
        return connection

    def _lost(self, connection: _Connection) -> None:
        if self._connection is connection:
            self._connection = None
        if connection.replies == 0 and not self._closed:
            # Accepted and closed unanswered: a full server (maxclients), a
            # protected-mode refusal or a proxy without a backend. Back off.
            self._failed_at = asyncio.get_running_loop().time()
            self._failure = connection.error

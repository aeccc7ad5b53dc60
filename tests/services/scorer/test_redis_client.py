"""The scorer's Redis client: one pipelined connection, kept across cancellations."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from services.scorer.redis_client import MultiplexedRedis, RedisAddress, pack_command
from tests.services.scorer.conftest import PrivateRedis, closed_port

T = TypeVar("T")

CONCURRENT = 32


def run(test: Callable[[], Awaitable[T]]) -> T:
    """Run ``test`` on uvloop, the scorer's event loop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(test())  # type: ignore[arg-type]


def unique_key() -> str:
    return f"redis-client-test:{uuid.uuid4().hex}"


class RecordingTransport:
    """Transport wrapper that keeps every write."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self._transport.write(data)

    def close(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()


def record_writes(client: MultiplexedRedis) -> list[bytes]:
    """Record every write of the client's current connection."""
    connection = client._connection
    assert connection is not None and connection.transport is not None
    recording = RecordingTransport(connection.transport)
    connection.transport = recording  # type: ignore[assignment]
    return recording.written


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis://127.0.0.1:16379/0",
            RedisAddress("127.0.0.1", 16379, None, 0, None, None, False),
        ),
        ("redis://:p%40ss@h/3", RedisAddress("h", 6379, None, 3, None, "p@ss", False)),
        ("rediss://u:p@h:1/1", RedisAddress("h", 1, None, 1, "u", "p", True)),
        ("redis://h?db=2", RedisAddress("h", 6379, None, 2, None, None, False)),
        (
            "unix:///run/r.sock?db=4",
            RedisAddress(None, 6379, "/run/r.sock", 4, None, None, False),
        ),
    ],
)  # fmt: skip
def test_address_from_url(url: str, expected: RedisAddress) -> None:
    assert RedisAddress.from_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h", "scheme 'http' is not supported"),
        ("redis://h/zero", "database 'zero' is not a number"),
        ("redis://h/0?ssl_cert_reqs=none", "parameters \\['ssl_cert_reqs'\\]"),
    ],
)
def test_address_unsupported_url_raises(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisAddress.from_url(url)


def test_pack_command_encodes_bulk_strings() -> None:
    packed = pack_command(["SET", "k", b"\x00v", 7, 1.5])

    assert (
        packed
        == b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\x00v\r\n$1\r\n7\r\n$3\r\n1.5\r\n"
    )


def test_pack_command_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="None is not text"):
        pack_command(["GET", None])  # type: ignore[list-item]


@pytest.mark.integration
def test_concurrent_commands_go_out_in_one_write(redis_url: str) -> None:
    keys = [unique_key() for _ in range(CONCURRENT)]

    async def get_all() -> tuple[list[Any], list[bytes]]:
        client = MultiplexedRedis(redis_url)
        try:
            await client.execute_many(("SET", key, key, "EX", 60) for key in keys)
            written = record_writes(client)
            values = await asyncio.gather(*(client.get(key) for key in keys))
            return values, written
        finally:
            await client.aclose()

    values, written = run(get_all)

    assert values == [key.encode() for key in keys]
    assert len(written) == 1


@pytest.mark.integration
def test_cancelled_command_keeps_the_connection(redis_url: str) -> None:
    key = unique_key()

    async def cancel_then_get() -> tuple[bool, bytes | None, bool]:
        client = MultiplexedRedis(redis_url)
        try:
            await client.execute("SET", key, "value", "EX", 60)
            connection = client._connection
            # BLPOP on a missing list replies only after its 0.2 s timeout.
            blocked = asyncio.ensure_future(client.execute("BLPOP", unique_key(), 0.2))
            await asyncio.sleep(0.02)
            blocked.cancel()
            value = await client.get(key)
            return blocked.cancelled(), value, client._connection is connection
        finally:
            await client.aclose()

    cancelled, value, same_connection = run(cancel_then_get)

    assert cancelled
    assert value == b"value"
    assert same_connection


@pytest.mark.integration
def test_error_reply_leaves_the_connection_usable(redis_url: str) -> None:
    key = unique_key()

    async def increment_text() -> tuple[ResponseError, bool]:
        client = MultiplexedRedis(redis_url)
        try:
            await client.execute("SET", key, "text", "EX", 60)
            with pytest.raises(ResponseError, match="not an integer") as raised:
                await client.execute("INCR", key)
            return raised.value, await client.ping()
        finally:
            await client.aclose()

    error, pinged = run(increment_text)

    assert isinstance(error, ResponseError)
    assert pinged


@pytest.mark.integration
def test_script_is_sent_again_after_flush(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    server.start()

    async def run_twice() -> list[Any]:
        client = MultiplexedRedis(server.url)
        script = client.register_script("return ARGV[1] .. KEYS[1]")
        try:
            first = await script(keys=["k"], args=["a"])
            await client.execute("SCRIPT", "FLUSH")
            second = await script(keys=["k"], args=["b"])
            return [first, second]
        finally:
            await client.aclose()

    try:
        replies = run(run_twice)
    finally:
        server.stop()

    assert replies == [b"ak", b"bk"]


@pytest.mark.integration
def test_password_and_database_from_url(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path, password="s3cret")
    server.start()
    url = server.url.rsplit("/", 1)[0] + "/5"

    async def write_to_database_5() -> tuple[Any, Any]:
        client = MultiplexedRedis(url)
        try:
            await client.execute("SET", "k", "in-5")
            return await client.get("k"), await client.execute("DBSIZE")
        finally:
            await client.aclose()

    try:
        value, size = run(write_to_database_5)
        unauthenticated = MultiplexedRedis(url.replace(":s3cret@", ""))
        with pytest.raises(RedisConnectionError, match="NOAUTH|Authentication"):
            run(lambda: unauthenticated.get("k"))
    finally:
        server.stop()

    assert value == b"in-5"
    assert size == 1


@pytest.mark.integration
def test_lost_connection_fails_waiting_commands(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    server.start()

    async def wait_through_restart() -> tuple[BaseException | None, bool]:
        client = MultiplexedRedis(server.url, retry_seconds=0.05)
        try:
            await client.ping()
            blocked = asyncio.ensure_future(client.execute("BLPOP", "list", 10))
            await asyncio.sleep(0.05)
            await asyncio.to_thread(server.stop)
            with pytest.raises(RedisConnectionError):
                await blocked
            failure = blocked.exception()
            await asyncio.to_thread(server.start)
            await asyncio.sleep(0.1)
            return failure, await client.ping()
        finally:
            await client.aclose()

    try:
        failure, pinged_again = run(wait_through_restart)
    finally:
        server.stop()

    assert isinstance(failure, RedisConnectionError)
    assert pinged_again


@pytest.mark.integration
def test_hung_server_connection_is_closed(silent_port: int) -> None:
    async def call_twice() -> tuple[bool, str]:
        client = MultiplexedRedis(
            f"redis://127.0.0.1:{silent_port}/0", stale_seconds=0.1
        )
        try:
            first = asyncio.ensure_future(client.ping())
            await asyncio.sleep(0.15)
            hung = client._connection
            # The next command finds the oldest unanswered one too old.
            second = asyncio.ensure_future(client.ping())
            with pytest.raises(RedisConnectionError) as raised:
                await first
            second.cancel()
            return hung is not None and hung.closed, str(raised.value)
        finally:
            await client.aclose()

    closed, message = run(call_twice)

    assert closed
    assert "did not reply within 0.1 s" in message


def test_failed_connect_is_not_retried_at_once() -> None:
    port = closed_port()

    async def connect_three_times() -> list[str]:
        client = MultiplexedRedis(f"redis://127.0.0.1:{port}/0", retry_seconds=0.2)
        messages = []
        for pause in (0.0, 0.0, 0.25):
            await asyncio.sleep(pause)
            with pytest.raises(RedisConnectionError) as raised:
                await client.ping()
            messages.append(str(raised.value))
        return messages

    first, second, third = run(connect_three_times)

    assert first.startswith("connecting to Redis failed: ")
    assert second.startswith("connecting to Redis failed 0.2 s ago or less")
    assert third.startswith("connecting to Redis failed: ")


@pytest.mark.integration
def test_many_waiting_commands_are_rejected(redis_url: str) -> None:
    async def exceed_the_limit() -> str:
        client = MultiplexedRedis(redis_url, max_pending=2)
        try:
            await client.ping()
            blocked = [
                asyncio.ensure_future(client.execute("BLPOP", unique_key(), 0.1))
                for _ in range(2)
            ]
            await asyncio.sleep(0)
            with pytest.raises(RedisConnectionError) as raised:
                await client.ping()
            await asyncio.gather(*blocked)
            return str(raised.value)
        finally:
            await client.aclose()

    assert run(exceed_the_limit) == (
        "2 Redis commands are waiting for replies already, and at most 2 may"
    )


@pytest.mark.parametrize(
    "command",
    [[], ["SUBSCRIBE", "channel"], [b"monitor"], ["client", b"REPLY", "OFF"]],
)
def test_pack_command_rejects_other_than_one_reply(command: list[Any]) -> None:
    with pytest.raises(ValueError, match="needs at least its name|exactly one reply"):
        pack_command(command)


def test_pack_command_accepts_other_client_subcommands() -> None:
    assert pack_command(["CLIENT", "SETNAME", "scorer"]).startswith(b"*3\r\n")


@contextlib.asynccontextmanager
async def refusing_server() -> AsyncIterator[int]:
    """Serve a port that accepts, sends an error line and closes, as a full Redis."""

    async def refuse(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"-ERR max number of clients reached\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def test_refused_connection_fails_commands_then_backs_off() -> None:
    async def ping_twice() -> list[str]:
        async with refusing_server() as port:
            client = MultiplexedRedis(f"redis://127.0.0.1:{port}/0", retry_seconds=5)
            messages = []
            for _ in range(2):
                with pytest.raises(RedisConnectionError) as raised:
                    # Bounded so that a command left without a reply fails
                    # the test instead of hanging it.
                    async with asyncio.timeout(5):
                        await client.ping()
                messages.append(str(raised.value))
            await client.aclose()
            return messages

    first, second = run(ping_twice)

    assert "max number of clients reached" in first
    assert second.startswith("connecting to Redis failed 5 s ago or less")
    assert "max number of clients reached" in second


def test_commands_after_aclose_fail() -> None:
    async def ping_after_close() -> str:
        client = MultiplexedRedis(f"redis://127.0.0.1:{closed_port()}/0")
        await client.aclose()
        with pytest.raises(RedisConnectionError) as raised:
            await client.ping()
        return str(raised.value)

    assert run(ping_after_close) == "the Redis client is closed"


def test_aclose_during_connect_fails_waiting_callers(silent_port: int) -> None:
    async def close_while_authenticating() -> BaseException | None:
        # The handshake's AUTH never gets a reply from the silent port.
        client = MultiplexedRedis(
            f"redis://:secret@127.0.0.1:{silent_port}/0", connect_timeout_seconds=5
        )
        waiting = asyncio.ensure_future(client.ping())
        await asyncio.sleep(0.05)
        await client.aclose()
        await asyncio.gather(waiting, return_exceptions=True)
        return waiting.exception()

    failure = run(close_while_authenticating)

    assert isinstance(failure, RedisConnectionError)
    assert str(failure) == "the Redis client was closed"


def test_aclose_releases_a_hung_connection_at_once(silent_port: int) -> None:
    async def close_with_unsent_data() -> BaseException | None:
        client = MultiplexedRedis(f"redis://127.0.0.1:{silent_port}/0")
        await client._connect()
        # More than the socket buffers hold, so most of it stays unsent.
        pending = asyncio.ensure_future(client.execute("SET", "k", b"x" * 32_000_000))
        await asyncio.sleep(0.05)
        await client.aclose()
        await asyncio.gather(pending, return_exceptions=True)
        return pending.exception()

    failure = run(close_with_unsent_data)

    assert isinstance(failure, RedisConnectionError)


@pytest.mark.integration
def test_execute_many_respects_the_pending_limit(redis_url: str) -> None:
    async def send_too_many() -> str:
        client = MultiplexedRedis(redis_url, max_pending=3)
        try:
            await client.ping()
            with pytest.raises(RedisConnectionError) as raised:
                await client.execute_many([("PING",)] * 4)
            return str(raised.value)
        finally:
            await client.aclose()

    assert run(send_too_many) == (
        "0 Redis commands are waiting for replies already, and at most 3 may"
    )

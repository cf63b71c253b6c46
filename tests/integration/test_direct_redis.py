"""DirectConnection on a real Redis: replies, error replies, one command at a time, a connection dropped on
cancellation or timeout and reopened; the once-publication and the candle reader on it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.inference.candle_reader import stream_entries
from shared.broker import Redis
from shared.direct_redis import DirectConnection
from shared.messages import ActivateModel
from shared.publishing import EventPublisher
from shared.streams import Stream

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

STREAM = "tradeloop.test.direct"


@pytest_asyncio.fixture(loop_scope="session")
async def connection(redis: Redis) -> AsyncIterator[DirectConnection]:
    """A DirectConnection on the test client, closed afterwards."""
    direct = DirectConnection(redis)
    try:
        yield direct
    finally:
        await direct.close()


async def test_replies_come_raw_and_an_error_reply_keeps_the_connection(connection: DirectConnection) -> None:
    assert await connection.execute("SET", "tradeloop:test:direct", "v") == b"OK"
    assert await connection.execute("GET", "tradeloop:test:direct") == b"v"
    client = await connection.execute("CLIENT", "ID")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await connection.execute("XLEN", "tradeloop:test:direct")
    assert await connection.execute("CLIENT", "ID") == client  # same socket: the error was a reply


async def test_it_uses_the_clients_database_and_a_socket_of_its_own(
    redis: Redis, connection: DirectConnection,
) -> None:
    await redis.set("tradeloop:test:db", "mine")
    assert await connection.execute("GET", "tradeloop:test:db") == b"mine"
    assert await connection.execute("CLIENT", "ID") != await redis.client_id()


async def test_a_second_concurrent_command_is_refused(connection: DirectConnection) -> None:
    blocked = asyncio.create_task(connection.execute("BLPOP", "tradeloop:test:never", 1))
    await asyncio.sleep(0.05)
    with pytest.raises(RuntimeError, match="one command at a time"):
        await connection.execute("PING")
    assert await blocked is None
    assert await connection.execute("PING") == b"PONG"


async def test_a_cancelled_read_drops_the_socket_and_the_next_command_gets_its_own_reply(
    redis: Redis, connection: DirectConnection,
) -> None:
    before = await connection.execute("CLIENT", "ID")
    blocked = asyncio.create_task(connection.execute("BLPOP", "tradeloop:test:late", 5))
    await asyncio.sleep(0.05)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    await redis.rpush("tradeloop:test:late", "x")  # had the old socket survived, its BLPOP reply would be next
    assert await connection.execute("ECHO", "mine") == b"mine"
    assert await connection.execute("CLIENT", "ID") != before
    assert await redis.lrange("tradeloop:test:late", 0, -1) == [b"x"]  # the cancelled BLPOP took nothing


async def test_a_reply_later_than_the_timeout_raises_and_the_connection_is_reopened(
    connection: DirectConnection,
) -> None:
    with pytest.raises(RedisTimeoutError):
        await connection.execute("BLPOP", "tradeloop:test:slow", 2, timeout=0.1)
    assert await connection.execute("PING") == b"PONG"


async def test_a_killed_connection_raises_a_connection_error_then_reconnects(
    redis: Redis, connection: DirectConnection,
) -> None:
    client = await connection.execute("CLIENT", "ID")
    await redis.client_kill_filter(_id=int(client))
    with pytest.raises(RedisConnectionError):
        await connection.execute("PING")
    assert await connection.execute("PING") == b"PONG"


async def test_once_publication_via_the_connection_sends_nothing_on_the_pool(
    redis: Redis, connection: DirectConnection, monkeypatch: pytest.MonkeyPatch,
) -> None:
    publisher = EventPublisher(redis)
    sent: list[Any] = []
    original = redis.execute_command

    async def execute_command(*args: Any, **options: Any) -> Any:
        sent.append(args[0])
        return await original(*args, **options)

    monkeypatch.setattr(redis, "execute_command", execute_command)
    try:
        publisher._once.sha = "0" * 40  # unknown to Redis: NOSCRIPT, loaded on the connection, then used
        messages = [(f"direct-{n}", ActivateModel(version_id=f"v{n}")) for n in range(3)]
        assert await publisher.publish_once(messages, via=connection) == 3
        assert publisher._once.sha != "0" * 40
        assert await publisher.publish_once(messages[:1], via=connection) == 0  # once per key, either path
        assert await publisher.publish_once(messages[:1]) == 0
        assert sent == ["EVALSHA"]  # only the last call went through the client
    finally:
        monkeypatch.undo()
    entries = await redis.xrange(Stream.ACTIVATE_MODEL.value)
    assert [json.loads(fields[b"__data__"])["version_id"] for _id, fields in entries] == ["v0", "v1", "v2"]


async def test_raw_group_reads_become_entries(redis: Redis, connection: DirectConnection) -> None:
    await redis.xgroup_create(STREAM, "g", id="0", mkstream=True)
    first = await redis.xadd(STREAM, {"__data__": b"one"})
    second = await redis.xadd(STREAM, {"a": b"1", "b": b"2"})
    reply = await connection.execute("XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "BLOCK", 50,
                                     "STREAMS", STREAM, ">")
    assert stream_entries(reply) == [(first, {b"__data__": b"one"}), (second, {b"a": b"1", b"b": b"2"})]
    assert stream_entries(await connection.execute("XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "BLOCK", 50,
                                                   "STREAMS", STREAM, ">")) == []
    await redis.xdel(STREAM, first)  # a pending entry deleted since delivery: no fields
    pending = await connection.execute("XREADGROUP", "GROUP", "g", "c", "STREAMS", STREAM, "0")
    assert stream_entries(pending) == [(first, {}), (second, {b"a": b"1", b"b": b"2"})]
    assert stream_entries({STREAM.encode(): [[second, [b"a", b"1"]]]}) == [(second, {b"a": b"1"})]  # RESP3


async def test_the_clients_socket_timeout_bounds_a_command_by_default(redis_url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, socket_timeout=0.2)
    connection = DirectConnection(client)
    try:
        with pytest.raises(RedisTimeoutError):
            await connection.execute("BLPOP", "tradeloop:test:bounded", 2)
        assert await connection.execute("BLPOP", "tradeloop:test:bounded", 1, timeout=3) is None  # its own bound
    finally:
        await connection.close()
        await client.aclose()

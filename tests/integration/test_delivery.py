"""Delivery semantics on a real Redis: groups at 0, ack after work, reclaim, dead letters, fan-out, once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from faststream.redis import RedisRouter

from shared.broker import Redis, ensure_work_groups, fanout_subscriber, make_broker, work_subscriber
from shared.messages import ActivateModel, ModelActivated
from shared.publishing import EventPublisher
from shared.settings import ServiceSettings
from shared.streams import Group, Stream

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

STREAM, GROUP = Stream.ACTIVATE_MODEL, Group.REGISTRY


def _settings(redis_url: str, consumer: str, **changes: Any) -> ServiceSettings:
    values = {"redis_url": redis_url, "consumer": consumer, "max_deliveries": 3, "reclaim_idle_ms": 300,
              "reclaim_poll_ms": 50, **changes}
    return ServiceSettings(**values)


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def _pending(redis: Redis) -> int:
    return int((await redis.xpending(STREAM.value, GROUP.value))["pending"])


async def _run_consumer(
    redis: Redis, settings: ServiceSettings, handler: Callable[[ActivateModel], Awaitable[None]]
) -> Any:
    broker = make_broker(settings, redis)
    router = RedisRouter()

    @work_subscriber(router, STREAM, GROUP, settings)
    async def on_activate(command: ActivateModel) -> None:
        await handler(command)

    broker.include_router(router)
    await ensure_work_groups(redis, [GROUP])
    await broker.start()
    return broker


async def test_entries_published_before_the_first_start_are_delivered(redis: Redis, redis_url: str) -> None:
    """Given commands XADDed before any consumer existed, when the service starts, then it gets them."""
    publisher = EventPublisher(redis)
    for n in range(3):
        await publisher.publish(ActivateModel(version_id=f"v{n}"))
    seen: list[str] = []

    async def handler(command: ActivateModel) -> None:
        seen.append(command.version_id)

    broker = await _run_consumer(redis, _settings(redis_url, "early"), handler)
    try:
        await _eventually(lambda: _async(len(seen) == 3))
        await _eventually(lambda: _async_pending_is(redis, 0))
    finally:
        await broker.stop()
    assert seen == ["v0", "v1", "v2"]


async def _async(value: bool) -> bool:
    return value


async def _async_pending_is(redis: Redis, count: int) -> bool:
    return await _pending(redis) == count


async def test_malformed_payload_goes_straight_to_the_dead_letter_stream(redis: Redis, redis_url: str) -> None:
    calls: list[ActivateModel] = []

    async def handler(command: ActivateModel) -> None:
        calls.append(command)

    broker = await _run_consumer(redis, _settings(redis_url, "strict"), handler)
    try:
        await redis.xadd(STREAM.value, {"__data__": json.dumps({"version_id": {"not": "a string"}})})
        await redis.xadd(STREAM.value, {"__data__": b"{not json"})
        await _eventually(lambda: _dlq_length_is(redis, 2))
        await _eventually(lambda: _async_pending_is(redis, 0))
    finally:
        await broker.stop()
    assert calls == []
    entries = await redis.xrange(STREAM.dlq)
    first = entries[0][1]
    assert b"ValidationError" in first[b"error"]
    assert json.loads(first[b"payload"]) == {"version_id": {"not": "a string"}}
    assert first[b"deliveries"] == b"1"
    assert first[b"group"] == GROUP.value.encode()


async def _dlq_length_is(redis: Redis, length: int) -> bool:
    return int(await redis.xlen(STREAM.dlq)) == length


async def test_failing_handler_is_retried_then_dead_lettered_after_max_deliveries(redis: Redis, redis_url: str) -> None:
    attempts: list[int] = []

    async def handler(command: ActivateModel) -> None:
        attempts.append(1)
        raise RuntimeError("database is down")

    broker = await _run_consumer(redis, _settings(redis_url, "flaky"), handler)
    try:
        await EventPublisher(redis).publish(ActivateModel(version_id="v-poison"))
        await _eventually(lambda: _dlq_length_is(redis, 1), timeout=15)
        await _eventually(lambda: _async_pending_is(redis, 0))
    finally:
        await broker.stop()
    assert len(attempts) == 3
    entry = (await redis.xrange(STREAM.dlq))[0][1]
    assert entry[b"deliveries"] == b"3"
    assert b"database is down" in entry[b"error"]
    assert json.loads(entry[b"payload"])["version_id"] == "v-poison"


async def test_transient_failure_succeeds_on_redelivery_without_dead_letter(redis: Redis, redis_url: str) -> None:
    attempts: list[str] = []

    async def handler(command: ActivateModel) -> None:
        attempts.append(command.version_id)
        if len(attempts) == 1:
            raise ConnectionError("blip")

    broker = await _run_consumer(redis, _settings(redis_url, "blip"), handler)
    try:
        await EventPublisher(redis).publish(ActivateModel(version_id="v-once"))
        await _eventually(lambda: _async(len(attempts) == 2))
        await _eventually(lambda: _async_pending_is(redis, 0))
    finally:
        await broker.stop()
    assert await redis.xlen(STREAM.dlq) == 0


async def test_a_dead_consumers_pending_message_is_finished_by_another(redis: Redis, redis_url: str) -> None:
    """Given a consumer that read a command and died, when another replica runs, its reclaimer finishes it."""
    await ensure_work_groups(redis, [GROUP])
    await EventPublisher(redis).publish(ActivateModel(version_id="v-orphan"))
    taken = await redis.xreadgroup(GROUP.value, "crashed-replica", {STREAM.value: ">"}, count=1)
    assert taken and await _pending(redis) == 1
    seen: list[str] = []

    async def handler(command: ActivateModel) -> None:
        seen.append(command.version_id)

    broker = await _run_consumer(redis, _settings(redis_url, "survivor"), handler)
    try:
        await _eventually(lambda: _async(seen == ["v-orphan"]))
        await _eventually(lambda: _async_pending_is(redis, 0))
    finally:
        await broker.stop()


async def test_ack_happens_only_after_the_work_is_done(redis: Redis, redis_url: str) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def handler(command: ActivateModel) -> None:
        started.set()
        await release.wait()

    broker = await _run_consumer(redis, _settings(redis_url, "slow", reclaim_idle_ms=60_000), handler)
    try:
        await EventPublisher(redis).publish(ActivateModel(version_id="v-slow"))
        await asyncio.wait_for(started.wait(), 10)
        assert await _pending(redis) == 1
        release.set()
        await _eventually(lambda: _async_pending_is(redis, 0))
    finally:
        await broker.stop()


async def test_activation_events_reach_every_replica(redis: Redis, redis_url: str) -> None:
    received: dict[str, list[int]] = {"a": [], "b": []}
    brokers = []
    for name in received:
        settings = _settings(redis_url, f"replica-{name}")
        broker = make_broker(settings, redis)

        fanout_subscriber(broker, Stream.MODEL_ACTIVATED, settings)(_recorder(received[name]))
        await broker.start()
        brokers.append(broker)
    try:
        await asyncio.sleep(0.3)
        event = ModelActivated.model_validate({
            "slot": {"market": "BTC-EUR", "timeframe": "1m"}, "version_id": "v1", "previous_version_id": None,
            "epoch": 4, "artifact": {"sha256": "a" * 64, "path": "p", "size": 1}, "feature_schema_hash": "h",
            "actor": "t", "reason": "r"})
        await EventPublisher(redis).publish(event)
        await _eventually(lambda: _async(received == {"a": [4], "b": [4]}))
    finally:
        for broker in brokers:
            await broker.stop()


def _recorder(sink: list[int]) -> Callable[[ModelActivated], Awaitable[None]]:
    async def on_activated(event: ModelActivated) -> None:
        sink.append(event.epoch)

    return on_activated


async def test_publish_once_writes_one_entry_per_key_across_concurrent_publishers(redis: Redis) -> None:
    messages = [(f"k{n}", ActivateModel(version_id=f"v{n}")) for n in range(50)]
    one, two = EventPublisher(redis), EventPublisher(redis)
    results = await asyncio.gather(one.publish_once(messages), two.publish_once(messages), one.publish_once(messages))
    assert sum(results) == 50
    assert await redis.xlen(STREAM.value) == 50

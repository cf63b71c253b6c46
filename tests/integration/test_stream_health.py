"""Stream health gauges on a real Redis: length, dead letters, pending, lag, oldest pending age."""

from __future__ import annotations

import asyncio
import math

import pytest
from prometheus_client import CollectorRegistry

from shared.broker import Redis, ensure_group
from shared.stream_health import StreamHealth, start_stream_health, stop_stream_health, watched_streams
from shared.streams import Group, Stream

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

CANDLES = Stream.CANDLE_CLOSED.value
GROUP = Group.INFERENCE.value


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_watched_streams_follow_the_work_groups() -> None:
    assert watched_streams([Group.INFERENCE]) == {CANDLES: (GROUP,)}
    registry = watched_streams(["registry"])
    assert Stream.ACTIVATE_MODEL.value in registry and CANDLES not in registry
    assert watched_streams([]) == {}


async def test_refresh_reports_length_pending_lag_and_age(redis: Redis) -> None:
    registry = CollectorRegistry()
    health = StreamHealth(redis, registry, [Group.INFERENCE], interval=0.05)

    await health.refresh()  # nothing exists yet: lengths 0, no group series
    assert value(registry, "tradeloop_stream_length", stream=CANDLES) == 0
    assert value(registry, "tradeloop_stream_length", stream=Stream.CANDLE_CLOSED.dlq) == 0
    assert value(registry, "tradeloop_stream_group_pending", stream=CANDLES, group=GROUP) is None

    await ensure_group(redis, CANDLES, GROUP)
    for n in range(5):
        await redis.xadd(CANDLES, {"__data__": f'{{"n": {n}}}'})
    await redis.xreadgroup(GROUP, "consumer-1", {CANDLES: ">"}, count=2)  # 2 pending, 3 undelivered
    await redis.xadd(Stream.CANDLE_CLOSED.dlq, {"payload": "x"})
    await asyncio.sleep(0.05)
    await health.refresh()

    assert value(registry, "tradeloop_stream_length", stream=CANDLES) == 5
    assert value(registry, "tradeloop_stream_length", stream=Stream.CANDLE_CLOSED.dlq) == 1
    assert value(registry, "tradeloop_stream_group_pending", stream=CANDLES, group=GROUP) == 2
    assert value(registry, "tradeloop_stream_group_lag", stream=CANDLES, group=GROUP) == 3
    age = value(registry, "tradeloop_stream_oldest_pending_seconds", stream=CANDLES, group=GROUP)
    assert age is not None and 0.04 <= age < 30

    entries = await redis.xrange(CANDLES, count=2)
    await redis.xack(CANDLES, GROUP, *[entry_id for entry_id, _ in entries])
    await health.refresh()
    assert value(registry, "tradeloop_stream_group_pending", stream=CANDLES, group=GROUP) == 0
    assert value(registry, "tradeloop_stream_oldest_pending_seconds", stream=CANDLES, group=GROUP) == 0

    await redis.xgroup_destroy(CANDLES, GROUP)  # a group that disappears loses its series
    await health.refresh()
    assert value(registry, "tradeloop_stream_group_lag", stream=CANDLES, group=GROUP) is None


async def test_lag_unknown_to_redis_is_nan(redis: Redis) -> None:
    registry = CollectorRegistry()
    health = StreamHealth(redis, registry, [Group.INFERENCE])
    await ensure_group(redis, CANDLES, GROUP)
    ids = [await redis.xadd(CANDLES, {"n": str(n)}) for n in range(3)]
    await redis.xdel(CANDLES, ids[1])  # a deleted entry among the undelivered ones: Redis cannot tell the lag
    await health.refresh()
    lag = value(registry, "tradeloop_stream_group_lag", stream=CANDLES, group=GROUP)
    assert lag is not None and (math.isnan(lag) or lag == 2)


async def test_the_task_refreshes_until_stopped(redis: Redis) -> None:
    registry = CollectorRegistry()
    await ensure_group(redis, CANDLES, GROUP)
    task = start_stream_health(redis, registry, [Group.INFERENCE], interval=0.05)
    try:
        await redis.xadd(CANDLES, {"n": "1"})
        for _ in range(100):
            if value(registry, "tradeloop_stream_length", stream=CANDLES) == 1:
                break
            await asyncio.sleep(0.02)
        assert value(registry, "tradeloop_stream_group_lag", stream=CANDLES, group=GROUP) == 1
    finally:
        await stop_stream_health(task)
    assert task.done()


async def test_start_and_stop_hooks_survive_redis_errors(redis: Redis) -> None:
    health = StreamHealth(redis, CollectorRegistry(), [Group.INFERENCE], interval=0.01)

    async def broken() -> None:
        raise ConnectionError("redis is away")

    health.refresh = broken  # type: ignore[method-assign]
    await health.start()
    await asyncio.sleep(0.05)
    assert health._task is not None and not health._task.done()  # keeps retrying
    await health.stop()
    assert health._task is None

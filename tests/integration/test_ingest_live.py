"""Live mode against the simulated exchange: two replicas, restarts, an accelerated clock."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest.backfill import ExchangeIngestor
from services.ingest.exchange.bitvavo import BitvavoClient, BitvavoClientConfig
from services.ingest.exchange.sim_server import AcceleratedClock, ManualClock, SimConfig, SimExchange
from services.ingest.handlers import StoreDeps
from services.ingest.locks import SeriesLocks
from services.ingest.metrics import IngestMetrics
from services.ingest.repository import stored_open_times
from services.ingest.settings import IngestSettings
from shared.broker import Redis
from shared.messages import CandleClosed
from shared.publishing import EventPublisher
from shared.streams import Stream
from shared.waiting import decode_entry

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

NOW_S = 1_767_225_630.0  # 2026-01-01T00:00:30Z
MINUTE = 60_000
MARKETS = ["BTC-EUR", "ETH-EUR"]
SIM_ERA_END = datetime(2026, 6, 1, tzinfo=UTC)


def replica(sim: SimExchange, sessions: async_sessionmaker[AsyncSession], redis: Redis, **settings: Any) -> ExchangeIngestor:
    """One ingest replica: its own client, rate budget and lock owner; shared database and Redis."""
    values: dict[str, Any] = {"source": "bitvavo", "exchange_url": sim.base_url, "markets": MARKETS,
                              "timeframes": ["1m", "5m"], "history_candles": 300}
    values.update(settings)
    metrics = IngestMetrics.create(None)
    return ExchangeIngestor(
        settings=IngestSettings(**values),
        client=BitvavoClient(BitvavoClientConfig(rest_url=sim.base_url, timeout_s=5), observer=metrics),
        store=StoreDeps(sessions, EventPublisher(redis), metrics),
        locks=SeriesLocks(redis, 10),
    )


async def published(redis: Redis) -> list[tuple[str, str, int]]:
    """(market, timeframe, open time) of the sim's CandleClosed entries, in stream order."""
    events = [decode_entry(Stream.CANDLE_CLOSED, f) for _, f in await redis.xrange(Stream.CANDLE_CLOSED.value)]
    return [
        (e.market, e.timeframe, int(e.open_time.timestamp() * 1000))
        for e in events
        if isinstance(e, CandleClosed) and e.source == "bitvavo" and e.open_time < SIM_ERA_END
    ]


async def test_two_replicas_publish_each_closed_candle_once_and_fetch_it_once(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    clock = ManualClock(NOW_S)
    with SimExchange(SimConfig(seed=4, clock=clock, markets=tuple(MARKETS), gap_rate=0.0)) as sim:
        first, second = replica(sim, sessions, redis), replica(sim, sessions, redis)
        await asyncio.gather(first.run_once(), second.run_once())  # both back-fill at once
        for step in range(12):
            clock.advance(30)  # every other step closes a 1m candle, every 10th a 5m candle
            sim.reset_stats()
            await asyncio.gather(first.run_once(), second.run_once())
            candle_requests = sum(sim.request_count(f"/v2/{m}/candles") for m in MARKETS)
            closed_1m = step % 2 == 0  # the clock reads hh:mm:00 after even steps
            closed_5m = step == 8  # 00:05:00
            assert candle_requests == len(MARKETS) * (closed_1m + closed_5m), step  # one replica fetched it

    events = await published(redis)
    assert len(events) == len(set(events))
    for market in MARKETS:
        for timeframe, step in (("1m", MINUTE), ("5m", 5 * MINUTE)):
            stored = await stored_open_times(sessions, market, timeframe)
            assert sorted(t for m, tf, t in events if (m, tf) == (market, timeframe)) == stored
            now_ms = int(clock() * 1000)
            truth = [c.open_time_ms for c in sim.candles(market, timeframe, stored[0], now_ms)]  # closed ones
            assert stored == truth and stored[-1] + step <= now_ms < stored[-1] + 2 * step


async def test_a_restarted_replica_publishes_nothing_twice(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    clock = ManualClock(NOW_S)
    with SimExchange(SimConfig(seed=4, clock=clock, markets=tuple(MARKETS))) as sim:
        await replica(sim, sessions, redis).run_once()
        before = await published(redis)
        clock.advance(120)
        restarted = replica(sim, sessions, redis)  # a new process: nothing in memory
        report = await restarted.run_once()
        after = await published(redis)
    assert len(after) == len(set(after)) == len(before) + report.published
    assert report.published == len(MARKETS) * 2  # two new 1m candles per market, no 5m one closed


async def test_follow_sees_new_candles_of_an_accelerated_exchange(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    """Given the sim at 600x (a 1m candle every 0.1 s), follow() keeps up after each boundary."""
    with SimExchange(SimConfig(seed=4, clock=AcceleratedClock(NOW_S, 600), limit_clock=time.time,
                               markets=("BTC-EUR",))) as sim:
        ingestor = replica(sim, sessions, redis, markets=["BTC-EUR"], timeframes=["1m"], clock_speed=600,
                           settle_seconds=0.01, history_candles=60)
        task = asyncio.create_task(ingestor.follow())
        await asyncio.sleep(1.5)
        task.cancel()  # may land between a commit and its publication, like a crash
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await ingestor.run_once()  # the restart repairs that from the ledger
        now_ms = sim.now_ms()
    stored = await stored_open_times(sessions, "BTC-EUR", "1m")
    assert len(stored) >= 60 + 8  # ≈ 15 candles closed while following
    assert stored[-1] + MINUTE <= now_ms and now_ms - stored[-1] < 5 * MINUTE
    events = [t for m, _, t in await published(redis) if m == "BTC-EUR"]
    assert sorted(events) == stored
    assert ingestor.store.metrics.lag.labels("BTC-EUR", "1m")._value.get() < 5 * 60


async def test_follow_stops_whenever_it_is_cancelled(sessions: async_sessionmaker[AsyncSession], redis: Redis) -> None:
    """A shutdown cancels follow() at an arbitrary point (mid-fetch, mid-commit, while a lock is released):
    it must end every time, never swallow the cancellation and run on."""
    rng = random.Random(5)
    with SimExchange(SimConfig(seed=4, clock=AcceleratedClock(NOW_S, 600), limit_clock=time.time,
                               markets=("BTC-EUR",))) as sim:
        ingestor = replica(sim, sessions, redis, markets=["BTC-EUR"], timeframes=["1m"], clock_speed=600,
                           settle_seconds=0.0, history_candles=60)
        for attempt in range(40):
            task = asyncio.create_task(ingestor.follow())
            await asyncio.sleep(rng.uniform(0.0, 0.05))
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=5.0)
            assert done, f"follow() ignored its cancellation (attempt {attempt})"
            assert task.cancelled(), f"follow() ended without its cancellation: {task!r}"

"""The page path of a backfill on real PostgreSQL + Redis: one-statement array insert, window store, page publish.

The insert must stay idempotent (a rerun stores nothing, a half-new page stores the new half), keep
every value exactly, and survive a writer that does not take the series lock; a stored page is
published once per candle, byte for byte the model's JSON, however often it is announced.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest import ledger
from services.ingest.handlers import StoreDeps, announce_window, candle_key, store_window
from services.ingest.metrics import IngestMetrics
from services.ingest.planning import Span
from services.ingest.repository import (
    candle_row,
    insert_candle_page,
    insert_candle_rows,
    lock_series,
    neighbourhood,
    recorded_gaps,
    stored_open_times,
)
from services.ingest.validation import RawCandle
from shared.broker import Redis
from shared.db.models import Candle
from shared.messages import CandleClosed
from shared.publishing import ONCE_TTL_SECONDS, EventPublisher
from shared.streams import Stream

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

MINUTE = 60_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def page(start_ms: int, count: int, step: int = MINUTE) -> list[RawCandle]:
    return [RawCandle(start_ms + i * step, 100.0 + i, 101.5 + i, 99.25 + i, 100.5 + i, 0.1 * i) for i in range(count)]


async def stored(sessions: async_sessionmaker[AsyncSession], market: str) -> list[RawCandle]:
    async with sessions() as session:
        rows = (await session.execute(
            select(Candle).where(Candle.market == market).order_by(Candle.open_time))).scalars().all()
    return [RawCandle(round(r.open_time.timestamp() * 1000), r.open, r.high, r.low, r.close, r.volume) for r in rows]


async def test_the_array_insert_is_idempotent_and_exact(sessions: async_sessionmaker[AsyncSession]) -> None:
    odd = [  # the shortest spellings of these doubles differ from repr(); open times off the minute
        RawCandle(T0 + 123, 5e-324, 1e300, 5e-324, 0.30000000000000004, 0.0),
        RawCandle(T0 + 60_999, 0.1, 1e16, 1e-7, 123456789012345680.0, 1.7976931348623157e308),
        RawCandle(946_684_800_001, 61_234.12345678, 61_300.5, 1.0000000000000002, 61_240.0, 12.3456789),
    ]
    async with sessions() as session, session.begin():
        await lock_series(session, "ODD-EUR", "1m")
        assert await insert_candle_page(session, "ODD-EUR", "1m", "test", odd, fresh=True) == 3
    assert await stored(sessions, "ODD-EUR") == sorted(odd, key=lambda c: c.open_time_ms)

    first = page(T0, 1440)
    async with sessions() as session, session.begin():
        await lock_series(session, "BTC-EUR", "1m")
        assert await insert_candle_page(session, "BTC-EUR", "1m", "test", first, fresh=True) == 1440
    async with sessions() as session, session.begin():
        assert await insert_candle_page(session, "BTC-EUR", "1m", "test", first) == 0  # a rerun stores nothing
        half_new = page(T0 + 720 * MINUTE, 1440)
        assert await insert_candle_page(session, "BTC-EUR", "1m", "test", half_new) == 720
    assert await stored_open_times(sessions, "BTC-EUR", "1m") == [T0 + i * MINUTE for i in range(2160)]


async def test_a_plain_insert_raced_by_a_writer_without_the_lock_falls_back(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    candles = page(T0, 100)
    async with sessions() as session, session.begin():
        await insert_candle_rows(session, [candle_row("BTC-EUR", "1m", candles[50], "other")])  # no series lock
    async with sessions() as session, session.begin():
        # the caller believed the range empty: the plain INSERT fails, its savepoint is rolled back,
        # and the idempotent insert runs in the same, still usable transaction
        assert await insert_candle_page(session, "BTC-EUR", "1m", "test", candles, fresh=True) == 99
        assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
    assert await stored_open_times(sessions, "BTC-EUR", "1m") == [c.open_time_ms for c in candles]
    async with sessions() as session:
        near = await neighbourhood(session, "BTC-EUR", "1m", datetime.fromtimestamp((T0 + 10 * MINUTE) / 1000, UTC),
                                   datetime.fromtimestamp((T0 + 20 * MINUTE) / 1000, UTC))
    assert (near.before_ms, near.after_ms, near.inside) == (T0 + 9 * MINUTE, T0 + 20 * MINUTE, 10)


async def test_a_stored_window_is_published_once_per_candle_and_its_gaps_recorded(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    deps = StoreDeps(sessions, EventPublisher(redis), IngestMetrics.create(None))
    window = Span(T0, T0 + 1440 * MINUTE)
    candles = [c for c in page(T0, 1440) if c.open_time_ms not in (T0 + 10 * MINUTE, T0 + 11 * MINUTE)]
    # a candle of the window that the page lacks (an earlier import): the open times are read back
    async with sessions() as session, session.begin():
        await insert_candle_rows(session, [candle_row("BTC-EUR", "1m", page(T0 + 11 * MINUTE, 1)[0], "csv")])

    first = await store_window(market="BTC-EUR", timeframe="1m", window=window, candles=candles, source="bitvavo",
                               deps=deps)
    assert (first.stored, first.gap_intervals) == (1438, 1)
    assert [(g.start_ms, g.missing) for g in await recorded_gaps(sessions, "BTC-EUR", "1m")] == [(T0 + 10 * MINUTE, 1)]
    result = await announce_window(first, deps=deps, complete_until=window.end)
    assert result.published == 1438
    assert await ledger.covered(sessions, "BTC-EUR", "1m") == [window]

    again = await store_window(market="BTC-EUR", timeframe="1m", window=window, candles=candles, source="bitvavo",
                               deps=deps)
    assert (again.stored, again.gap_intervals) == (0, 0)
    assert (await announce_window(again, deps=deps, complete_until=window.end)).published == 0

    entries = await redis.xrange(Stream.CANDLE_CLOSED.value)
    assert len(entries) == 1438
    for (_, fields), candle in zip(entries, candles, strict=True):
        raw = fields[b"__data__"].decode()
        event = CandleClosed.model_validate_json(raw)
        assert raw == event.model_dump_json() and event.source == "bitvavo"
        assert round(event.open_time.timestamp() * 1000) == candle.open_time_ms and event.close == candle.close
        key = f"tradeloop:once:{candle_key('BTC-EUR', '1m', candle.open_time_ms)}"
        assert await redis.get(key) == str(event.event_id).encode()
        assert ONCE_TTL_SECONDS - 5 <= await redis.ttl(key) <= ONCE_TTL_SECONDS
    assert json.loads(entries[0][1][b"__data__"])["market"] == "BTC-EUR"

"""The page store on the embedded SQLite fallback (no DATABASE_URL): the generic insert, gaps and the ledger."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest import ledger
from services.ingest.handlers import StoreDeps, store_window
from services.ingest.metrics import IngestMetrics
from services.ingest.planning import Span
from services.ingest.repository import insert_candle_page, recorded_gaps, stored_open_times
from services.ingest.validation import RawCandle
from shared.broker import make_redis
from shared.publishing import EventPublisher

pytestmark = pytest.mark.asyncio(loop_scope="session")
MINUTE = 60_000
T0 = 1_767_225_600_000


def page(start_ms: int, count: int) -> list[RawCandle]:
    return [RawCandle(start_ms + i * MINUTE, 100.0 + i, 101.5 + i, 99.25 + i, 100.5 + i, 0.1 * i) for i in range(count)]


async def test_pages_are_stored_once_with_their_gaps_on_sqlite(sqlite: async_sessionmaker[AsyncSession]) -> None:
    redis = make_redis("redis://127.0.0.1:1/0")  # never reached: valid pages need no dead letters
    deps = StoreDeps(sqlite, EventPublisher(redis), IngestMetrics.create(None))
    newer, older = Span(T0 + 1440 * MINUTE, T0 + 2880 * MINUTE), Span(T0, T0 + 1440 * MINUTE)
    holes = {T0 + 1500 * MINUTE, T0 + 1501 * MINUTE}
    first = await store_window(market="BTC-EUR", timeframe="1m", window=newer,
                               candles=[c for c in page(newer.start, 1440) if c.open_time_ms not in holes],
                               source="bitvavo", deps=deps)
    assert (first.stored, first.gap_intervals) == (1438, 2)
    await ledger.mark_complete(sqlite, "BTC-EUR", "1m", newer)
    second = await store_window(market="BTC-EUR", timeframe="1m", window=older, candles=page(older.start, 1440),
                                source="bitvavo", deps=deps, known=[newer])
    assert (second.stored, second.gap_intervals) == (1440, 0)
    await ledger.mark_complete(sqlite, "BTC-EUR", "1m", older)
    assert await ledger.covered(sqlite, "BTC-EUR", "1m") == [Span(older.start, newer.end)]
    assert [(g.start_ms, g.missing) for g in await recorded_gaps(sqlite, "BTC-EUR", "1m")] == [(T0 + 1500 * MINUTE, 2)]
    async with sqlite() as session, session.begin():
        assert await insert_candle_page(session, "BTC-EUR", "1m", "bitvavo", page(T0, 10), fresh=True) == 0
    assert len(await stored_open_times(sqlite, "BTC-EUR", "1m")) == 2878
    await redis.aclose()

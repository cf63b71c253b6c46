"""The fetch ledger: which open-time ranges of each (market, interval) are completely stored.

A range is added only after its candles are committed and published, so a crash between the
two costs a refetch, never a lost publication. Ranges are merged on write and never overlap.
"""

from __future__ import annotations

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest.planning import Span
from services.ingest.repository import datetime_to_ms, lock_series, ms_to_datetime
from shared.db.models_ingest import FetchLedger
from shared.db.session import whole_transaction


async def covered(sessions: async_sessionmaker[AsyncSession], market: str, timeframe: str) -> list[Span]:
    """The complete ranges of (market, timeframe), ascending."""
    async with sessions() as session:
        statement = (
            select(FetchLedger.start_time, FetchLedger.end_time)
            .where(FetchLedger.market == market, FetchLedger.timeframe == timeframe)
            .order_by(FetchLedger.start_time)
        )
        rows = (await session.execute(statement)).all()
    return [Span(datetime_to_ms(start), datetime_to_ms(end)) for start, end in rows]


async def covered_in(session: AsyncSession, market: str, timeframe: str) -> list[Span]:
    """The complete ranges of (market, timeframe), read in the caller's transaction."""
    statement = select(FetchLedger.start_time, FetchLedger.end_time).where(
        FetchLedger.market == market, FetchLedger.timeframe == timeframe
    )
    return [Span(datetime_to_ms(start), datetime_to_ms(end)) for start, end in (await session.execute(statement)).all()]


_SERIES = (FetchLedger.market == bindparam("market"), FetchLedger.timeframe == bindparam("timeframe"))
_TAKE_TOUCHING = (
    delete(FetchLedger)
    .where(*_SERIES, FetchLedger.start_time <= bindparam("high"), FetchLedger.end_time >= bindparam("low"))
    .returning(FetchLedger.start_time, FetchLedger.end_time)
)
_ADD = insert(FetchLedger)


async def mark_complete(
    sessions: async_sessionmaker[AsyncSession], market: str, timeframe: str, span: Span
) -> Span | None:
    """Record ``span`` as complete, merged with the ranges it overlaps or touches; return the merged range.

    One transaction under the series' ledger lock: take out the touching ranges (``DELETE ...
    RETURNING``), put back their union with ``span``. A cancellation waits for it to commit.
    """
    if not span:
        return None

    async def merge(session: AsyncSession) -> Span:
        await lock_series(session, market, timeframe, purpose="ledger")
        low, high = ms_to_datetime(span.start), ms_to_datetime(span.end)
        params = {"market": market, "timeframe": timeframe, "low": low, "high": high}
        taken = (await session.execute(_TAKE_TOUCHING, params)).all()
        start = min([span.start, *(datetime_to_ms(row.start_time) for row in taken)])
        end = max([span.end, *(datetime_to_ms(row.end_time) for row in taken)])
        await session.execute(
            _ADD,
            {"market": market, "timeframe": timeframe, "start_time": ms_to_datetime(start), "end_time": ms_to_datetime(end)},
        )
        return Span(start, end)

    return await whole_transaction(sessions, merge)

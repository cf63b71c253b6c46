"""The fetch ledger: which open-time ranges of each (market, interval) are completely stored.

A range is added only after its candles are committed and published, so a crash between the
two costs a refetch, never a lost publication. Ranges are merged on write and never overlap.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest.planning import Span
from services.ingest.repository import datetime_to_ms, lock_series, ms_to_datetime
from shared.db.models_ingest import FetchLedger


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


async def mark_complete(
    sessions: async_sessionmaker[AsyncSession], market: str, timeframe: str, span: Span
) -> Span | None:
    """Record ``span`` as complete, merged with the ranges it overlaps or touches; return the merged range."""
    if not span:
        return None
    async with sessions() as session, session.begin():
        await lock_series(session, market, timeframe, purpose="ledger")
        series = (FetchLedger.market == market, FetchLedger.timeframe == timeframe)
        low, high = ms_to_datetime(span.start), ms_to_datetime(span.end)
        touching = select(FetchLedger.id, FetchLedger.start_time, FetchLedger.end_time).where(
            *series, FetchLedger.start_time <= high, FetchLedger.end_time >= low
        )
        rows = (await session.execute(touching)).all()
        start = min([span.start, *(datetime_to_ms(row.start_time) for row in rows)])
        end = max([span.end, *(datetime_to_ms(row.end_time) for row in rows)])
        if rows:
            await session.execute(delete(FetchLedger).where(FetchLedger.id.in_([row.id for row in rows])))
            await session.flush()
        session.add(
            FetchLedger(market=market, timeframe=timeframe, start_time=ms_to_datetime(start), end_time=ms_to_datetime(end))
        )
    return Span(start, end)

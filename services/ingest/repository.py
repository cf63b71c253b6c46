"""Candle storage: idempotent upserts and range reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Candle
from shared.db.session import dialect_insert, rows_affected

CHUNK = 2000  # rows per INSERT (9 columns: well under the 32767 parameter limit)


def ms_to_datetime(ms: int) -> datetime:
    """UTC datetime of a millisecond timestamp."""
    return datetime.fromtimestamp(ms / 1000, UTC)


async def insert_candles(
    sessions: async_sessionmaker[AsyncSession], rows: Sequence[dict[str, object]]
) -> int:
    """Insert candles, ignoring ones already stored; return how many were new. One transaction."""
    inserted = 0
    async with sessions() as session, session.begin():
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            statement = (
                dialect_insert(session, Candle)
                .values(list(chunk))
                .on_conflict_do_nothing(index_elements=["market", "timeframe", "open_time"])
            )
            inserted += rows_affected(await session.execute(statement))
    return inserted


async def latest_open_time(
    sessions: async_sessionmaker[AsyncSession], market: str, timeframe: str
) -> datetime | None:
    """Open time of the newest stored candle of (market, timeframe)."""
    async with sessions() as session:
        statement = select(func.max(Candle.open_time)).where(
            Candle.market == market, Candle.timeframe == timeframe
        )
        value: datetime | None = (await session.execute(statement)).scalar_one_or_none()
        return value


async def count_candles(sessions: async_sessionmaker[AsyncSession], market: str, timeframe: str) -> int:
    """How many candles of (market, timeframe) are stored."""
    async with sessions() as session:
        statement = select(func.count()).where(Candle.market == market, Candle.timeframe == timeframe)
        return int((await session.execute(statement)).scalar_one())

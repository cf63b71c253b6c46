"""Candle storage: idempotent inserts, gap records and range reads.

On PostgreSQL a batch is one ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING``
(9 array parameters, whatever the batch size); elsewhere a chunked multi-row INSERT.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Candle
from shared.db.models_ingest import CandleGap
from shared.db.session import dialect_insert, rows_affected

CHUNK = 2000  # rows per INSERT (9 columns: well under the 32767 parameter limit)

_UNNEST_INSERT = text(
    "INSERT INTO candles (market, timeframe, open_time, open, high, low, close, volume, source) "
    "SELECT :market, :timeframe, t.open_time, t.open, t.high, t.low, t.close, t.volume, :source "
    "FROM unnest(CAST(:open_time AS timestamptz[]), CAST(:open AS float8[]), CAST(:high AS float8[]), "
    "CAST(:low AS float8[]), CAST(:close AS float8[]), CAST(:volume AS float8[])) "
    "AS t(open_time, open, high, low, close, volume) "
    "ON CONFLICT (market, timeframe, open_time) DO NOTHING"
)


def ms_to_datetime(ms: int) -> datetime:
    """UTC datetime of a millisecond timestamp."""
    return datetime.fromtimestamp(ms / 1000, UTC)


def datetime_to_ms(value: datetime) -> int:
    """UTC ms of an aware datetime (exact for whole milliseconds)."""
    return round(value.timestamp() * 1000)


def series_lock_key(market: str, timeframe: str, purpose: str = "candles") -> int:
    """A stable positive key for PostgreSQL advisory locks on one series (per purpose)."""
    return zlib.crc32(f"tradeloop-ingest:{purpose}:{market}:{timeframe}".encode()) | (1 << 40)


def dialect_name(session: AsyncSession) -> str:
    """The database dialect behind ``session`` (``postgresql`` or ``sqlite``)."""
    return session.get_bind().dialect.name


async def lock_series(session: AsyncSession, market: str, timeframe: str, purpose: str = "candles") -> None:
    """Serialise writers of one series until the transaction ends (PostgreSQL; SQLite has one writer)."""
    if dialect_name(session) == "postgresql":
        key = series_lock_key(market, timeframe, purpose)
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


async def insert_candles(
    sessions: async_sessionmaker[AsyncSession], rows: Sequence[dict[str, object]]
) -> int:
    """Insert candles, ignoring ones already stored; return how many were new. One transaction."""
    async with sessions() as session, session.begin():
        return await insert_candle_rows(session, rows)


async def insert_candle_rows(session: AsyncSession, rows: Sequence[dict[str, object]]) -> int:
    """Insert candle rows in the caller's transaction; return how many were new."""
    if not rows:
        return 0
    if dialect_name(session) == "postgresql" and _one_series(rows):
        first = rows[0]
        params = {
            "market": first["market"],
            "timeframe": first["timeframe"],
            "source": first["source"],
            **{name: [row[name] for row in rows] for name in ("open_time", "open", "high", "low", "close", "volume")},
        }
        return rows_affected(await session.execute(_UNNEST_INSERT, params))
    inserted = 0
    for start in range(0, len(rows), CHUNK):
        statement = (
            dialect_insert(session, Candle)
            .values(list(rows[start : start + CHUNK]))
            .on_conflict_do_nothing(index_elements=["market", "timeframe", "open_time"])
        )
        inserted += rows_affected(await session.execute(statement))
    return inserted


def _one_series(rows: Sequence[dict[str, object]]) -> bool:
    first = rows[0]
    return all(
        row["market"] == first["market"] and row["timeframe"] == first["timeframe"] and row["source"] == first["source"]
        for row in rows
    )


async def around(session: AsyncSession, market: str, timeframe: str, start: datetime, end: datetime) -> list[int]:
    """Stored open times (ms, ascending) in ``[start, end)`` plus the nearest one on each side, in one query.

    The neighbours are ``ORDER BY .. LIMIT 1`` lookups (an index probe each, whatever the
    statistics say); with no candle at or after ``end``, ``<= end`` is the same as ``< end``.
    """
    series = (Candle.market == market, Candle.timeframe == timeframe)
    before = (
        select(Candle.open_time).where(*series, Candle.open_time < start)
        .order_by(Candle.open_time.desc()).limit(1).scalar_subquery()
    )
    after = (
        select(Candle.open_time).where(*series, Candle.open_time >= end)
        .order_by(Candle.open_time).limit(1).scalar_subquery()
    )
    statement = (
        select(Candle.open_time)
        .where(
            *series,
            Candle.open_time >= func.coalesce(before, start),
            Candle.open_time <= func.coalesce(after, end),
        )
        .order_by(Candle.open_time)
    )
    return [datetime_to_ms(value) for value in (await session.execute(statement)).scalars()]


@dataclass(frozen=True)
class Gap:
    """Intervals ``[start_ms, end_ms)`` without a candle, between two stored candles."""

    start_ms: int
    end_ms: int
    missing: int


def find_gaps(open_times_ms: Sequence[int], interval_ms: int) -> list[Gap]:
    """Gaps between consecutive open times (ascending, bounded by candles on both sides)."""
    return [
        Gap(before + interval_ms, after, (after - before) // interval_ms - 1)
        for before, after in itertools.pairwise(open_times_ms)
        if after - before > interval_ms
    ]


async def replace_gaps(
    session: AsyncSession, market: str, timeframe: str, region: tuple[datetime, datetime], gaps: Sequence[Gap]
) -> int:
    """Make ``gaps`` the recorded gaps overlapping ``region``; return intervals newly recorded."""
    series = (CandleGap.market == market, CandleGap.timeframe == timeframe)
    low, high = region
    overlapping = select(CandleGap.start_time, CandleGap.end_time).where(
        *series, CandleGap.start_time < high, CandleGap.end_time > low
    )
    existing = {(datetime_to_ms(s), datetime_to_ms(e)) for s, e in (await session.execute(overlapping)).all()}
    wanted = {(gap.start_ms, gap.end_ms): gap for gap in gaps}
    stale = [start for start, end in existing if (start, end) not in wanted]
    if stale:
        await session.execute(
            delete(CandleGap).where(*series, CandleGap.start_time.in_([ms_to_datetime(ms) for ms in stale]))
        )
    new = [gap for key, gap in wanted.items() if key not in existing]
    if new:
        rows = [
            {
                "market": market,
                "timeframe": timeframe,
                "start_time": ms_to_datetime(gap.start_ms),
                "end_time": ms_to_datetime(gap.end_ms),
                "missing": gap.missing,
            }
            for gap in new
        ]
        await session.execute(
            dialect_insert(session, CandleGap)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["market", "timeframe", "start_time"])
        )
    return sum(gap.missing for gap in new)


async def recorded_gaps(sessions: async_sessionmaker[AsyncSession], market: str, timeframe: str) -> list[Gap]:
    """Every recorded gap of (market, timeframe), ascending."""
    async with sessions() as session:
        statement = (
            select(CandleGap.start_time, CandleGap.end_time, CandleGap.missing)
            .where(CandleGap.market == market, CandleGap.timeframe == timeframe)
            .order_by(CandleGap.start_time)
        )
        return [Gap(datetime_to_ms(s), datetime_to_ms(e), int(n)) for s, e, n in (await session.execute(statement)).all()]


async def latest_open_time(
    sessions: async_sessionmaker[AsyncSession], market: str, timeframe: str
) -> datetime | None:
    """Open time of the newest stored candle of (market, timeframe)."""
    async with sessions() as session:
        statement = (
            select(Candle.open_time)
            .where(Candle.market == market, Candle.timeframe == timeframe)
            .order_by(Candle.open_time.desc())
            .limit(1)
        )
        value: datetime | None = (await session.execute(statement)).scalar_one_or_none()
        return value


async def count_candles(
    sessions: async_sessionmaker[AsyncSession],
    market: str,
    timeframe: str,
    spans: Sequence[tuple[datetime, datetime]] | None = None,
) -> int:
    """How many candles of (market, timeframe) are stored (within ``spans`` when given)."""
    async with sessions() as session:
        total = 0
        for low, high in spans if spans is not None else [(None, None)]:
            statement = select(func.count()).where(Candle.market == market, Candle.timeframe == timeframe)
            if low is not None and high is not None:
                statement = statement.where(Candle.open_time >= low, Candle.open_time < high)
            total += int((await session.execute(statement)).scalar_one())
        return total


async def stored_open_times(
    sessions: async_sessionmaker[AsyncSession], market: str, timeframe: str
) -> list[int]:
    """Every stored open time of (market, timeframe) in ms, ascending."""
    async with sessions() as session:
        statement = (
            select(Candle.open_time)
            .where(Candle.market == market, Candle.timeframe == timeframe)
            .order_by(Candle.open_time)
        )
        return [datetime_to_ms(value) for value in (await session.execute(statement)).scalars()]

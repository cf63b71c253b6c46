"""Candle storage: idempotent inserts, gap records and range reads.

On PostgreSQL a batch is one ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING``
(a handful of array parameters, whatever the batch size); elsewhere a chunked multi-row INSERT.
A page of :class:`RawCandle` goes to PostgreSQL as columns straight from the candles (open times
as epoch ms, converted by the server), without a dict or a datetime per row.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic_core import to_json
from sqlalchemy import Select, bindparam, delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest.validation import RawCandle
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


_PAGE_INSERT = (
    "INSERT INTO candles (market, timeframe, open_time, open, high, low, close, volume, source) "
    "SELECT :market, :timeframe, TIMESTAMPTZ 'epoch' + t.open_time_ms * INTERVAL '1 millisecond', "
    "t.open, t.high, t.low, t.close, t.volume, :source "
    "FROM unnest(CAST(CAST(:open_time_ms AS text) AS int8[]), CAST(CAST(:open AS text) AS float8[]), "
    "CAST(CAST(:high AS text) AS float8[]), CAST(CAST(:low AS text) AS float8[]), "
    "CAST(CAST(:close AS text) AS float8[]), CAST(CAST(:volume AS text) AS float8[])) "
    "AS t(open_time_ms, open, high, low, close, volume)"
)
"""Columns travel as array literals (``{1.5,2.25}``) written by pydantic's serialiser: its floats are
the shortest spelling that reads back as the same double, so PostgreSQL parses exactly the values
sent, and building six strings costs the client a third of what asyncpg's per-element binary
encoding does (PostgreSQL spends a little more). Open times travel as epoch ms;
``epoch + ms * 1 ms`` is exact (whole microseconds, no float seconds)."""
_PAGE_INSERT_IDEMPOTENT = text(_PAGE_INSERT + " ON CONFLICT (market, timeframe, open_time) DO NOTHING")
_PAGE_INSERT_FRESH = text(_PAGE_INSERT)


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


async def insert_candle_page(
    session: AsyncSession,
    market: str,
    timeframe: str,
    source: str,
    candles: Sequence[RawCandle],
    *,
    fresh: bool = False,
) -> int:
    """Insert the candles of one series in the caller's transaction, ignoring stored ones; return how many were new.

    PostgreSQL: one statement with six array parameters. Elsewhere: :func:`insert_candle_rows`.
    ``fresh``: the caller holds the series lock (:func:`lock_series`) and found no candle stored in
    the page's range, so a plain INSERT is tried first, in a savepoint: it skips the conflict
    arbitration of ``ON CONFLICT DO NOTHING``, a third of PostgreSQL's work for a page. Should a
    writer without the lock have stored one of these candles meanwhile, the savepoint is rolled
    back and the idempotent insert runs instead.
    """
    if not candles:
        return 0
    if dialect_name(session) != "postgresql":
        return await insert_candle_rows(session, [candle_row(market, timeframe, c, source) for c in candles])
    params = {
        "market": market,
        "timeframe": timeframe,
        "source": source,
        "open_time_ms": _array_literal([int(c.open_time_ms) for c in candles]),
        "open": _array_literal([float(c.open) for c in candles]),
        "high": _array_literal([float(c.high) for c in candles]),
        "low": _array_literal([float(c.low) for c in candles]),
        "close": _array_literal([float(c.close) for c in candles]),
        "volume": _array_literal([float(c.volume) for c in candles]),
    }
    if fresh:
        try:
            async with session.begin_nested():
                return rows_affected(await session.execute(_PAGE_INSERT_FRESH, params))
        except IntegrityError:
            pass  # stored meanwhile by a writer that does not take the series lock
    return rows_affected(await session.execute(_PAGE_INSERT_IDEMPOTENT, params))


def _array_literal(values: list[int] | list[float]) -> str:
    """A PostgreSQL array literal of finite numbers (``[1,2.5]`` as JSON is ``{1,2.5}`` as an array)."""
    return "{" + to_json(values).decode()[1:-1] + "}"


def candle_row(market: str, timeframe: str, candle: RawCandle, source: str) -> dict[str, object]:
    """The ``candles`` row of ``candle`` (for the generic insert)."""
    return {
        "market": market,
        "timeframe": timeframe,
        "open_time": ms_to_datetime(candle.open_time_ms),
        "open": candle.open,
        "high": candle.high,
        "low": candle.low,
        "close": candle.close,
        "volume": candle.volume,
        "source": source,
    }


def _one_series(rows: Sequence[dict[str, object]]) -> bool:
    first = rows[0]
    return all(
        row["market"] == first["market"] and row["timeframe"] == first["timeframe"] and row["source"] == first["source"]
        for row in rows
    )


def _neighbours(series: tuple[Any, ...], start: Any, end: Any) -> tuple[Any, Any]:
    """Scalar subqueries: the newest open time of ``series`` before ``start``, the oldest at or after ``end``
    (``ORDER BY .. LIMIT 1``: an index probe each, whatever the statistics say)."""
    before = (
        select(Candle.open_time).where(*series, Candle.open_time < start)
        .order_by(Candle.open_time.desc()).limit(1).scalar_subquery()
    )
    after = (
        select(Candle.open_time).where(*series, Candle.open_time >= end)
        .order_by(Candle.open_time).limit(1).scalar_subquery()
    )
    return before, after


async def around(session: AsyncSession, market: str, timeframe: str, start: datetime, end: datetime) -> list[int]:
    """Stored open times (ms, ascending) in ``[start, end)`` plus the nearest one on each side, in one query.

    The neighbours are ``ORDER BY .. LIMIT 1`` lookups (an index probe each, whatever the
    statistics say); with no candle at or after ``end``, ``<= end`` is the same as ``< end``.
    """
    series = (Candle.market == market, Candle.timeframe == timeframe)
    before, after = _neighbours(series, start, end)
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
class Neighbourhood:
    """What a window of a series holds: its stored candles, and the nearest stored one on each side."""

    before_ms: int | None
    """Open time of the newest stored candle before the window."""
    after_ms: int | None
    """Open time of the oldest stored candle at or after the window's end."""
    inside: int
    """Stored candles in the window."""


def _neighbourhood_statement() -> Select[Any]:
    series = (Candle.market == bindparam("market"), Candle.timeframe == bindparam("timeframe"))
    start, end = bindparam("start", type_=Candle.open_time.type), bindparam("end", type_=Candle.open_time.type)
    before, after = _neighbours(series, start, end)
    inside = select(func.count()).where(*series, Candle.open_time >= start, Candle.open_time < end).scalar_subquery()
    return select(before, after, inside)


_NEIGHBOURHOOD = _neighbourhood_statement()


async def neighbourhood(session: AsyncSession, market: str, timeframe: str, start: datetime, end: datetime) -> Neighbourhood:
    """The two neighbours of ``[start, end)`` and how many candles it holds, in one query (two index
    probes and an index range count)."""
    params = {"market": market, "timeframe": timeframe, "start": start, "end": end}
    row = (await session.execute(_NEIGHBOURHOOD, params)).one()
    before, after, inside = row[0], row[1], row[2]
    return Neighbourhood(
        None if before is None else datetime_to_ms(before),
        None if after is None else datetime_to_ms(after),
        int(inside),
    )


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

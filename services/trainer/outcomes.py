"""Seed 003's samples: closed trades (``training_samples`` with ``outcome_known``) of one market.

The window is ``(until - window_days, until]`` by exit time, where ``until`` is the command's
``occurred_at`` (a scheduled tick), so the same command on the same data loads the same rows.
Rows are ordered by entry time. A row is usable when its feature vector has the expected schema
hash and length; finiteness is checked by the pipeline (``too_few_valid_samples``).

Speed: one query, no server-side sort (rows are ordered in numpy), feature bytes only for rows
of the wanted schema. On PostgreSQL the rows come straight from asyncpg with epoch-second
timestamps (no per-row ORM or type processing); elsewhere through SQLAlchemy Core.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import LargeBinary, func, or_, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.trainer.datasets import Samples, empty_samples
from services.trainer.feature_schemas import find_schema, serving_schema
from services.trainer.outcomes_pg import copy_rows
from shared.db.models import TrainingSample

SOURCE = "trade_outcomes"
_T = TrainingSample
_ENTRY = func.coalesce(_T.entry_time, _T.timestamp)
def _slot_rows(market: str, timeframe: str) -> list[Any]:
    """Closed trades of ``market`` on ``timeframe`` (rows without a timeframe count for every one)."""
    return [_T.symbol == market, _T.outcome_known.is_(True), or_(_T.timeframe == timeframe, _T.timeframe.is_(None))]


async def has_outcomes(sessions: async_sessionmaker[AsyncSession], market: str, timeframe: str) -> bool:
    """Whether any closed trade exists for the slot (else the trainer cold-starts from candles)."""
    async with sessions() as session:
        found = (await session.execute(select(_T.id).where(*_slot_rows(market, timeframe)).limit(1))).first()
    return found is not None


async def _choose_schema(session: AsyncSession, where: list[Any], wanted: str) -> str | None:
    if wanted == "serving":
        return serving_schema().hash
    if wanted != "newest":
        return wanted
    newest = await session.execute(select(_T.feature_schema_hash).where(*where).order_by(_T.exit_time.desc()).limit(1))
    return newest.scalar_one_or_none()


Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


async def _fetch(
    session: AsyncSession, where: list[Any], args: tuple[str, str, datetime, datetime, str], width: int
) -> Columns:
    """Every window row as columns: id, wanted schema?, right width?, features [n, width bytes] (zeros unless
    both), label (NaN when missing), entry and exit (datetime64[ns])."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        raw = await connection.get_raw_connection()
        rows = await copy_rows(raw.driver_connection, args, width)
        if rows is not None:
            features = rows["features"]
            return (rows["id"].astype(np.int64), rows["schema"].astype(bool), rows["width"].astype(bool), features,
                    rows["label"].astype(np.float64), _epoch_ns(rows["entry"]), _epoch_ns(rows["exit"]))
    wanted = func.coalesce(_T.feature_schema_hash == args[4], False)
    statement = select(_T.id, wanted, func.length(_T.features), type_coerce(_T.features, LargeBinary),
                       _T.target_label, _ENTRY, _T.exit_time)
    rows_ = (await connection.execute(statement.where(*where))).all()
    fits = [bool(row[1]) and row[2] == width for row in rows_]
    blank = bytes(width)
    blobs = b"".join(bytes(row[3]) if fit else blank for row, fit in zip(rows_, fits, strict=True))
    return (
        np.array([row[0] for row in rows_], dtype=np.int64),
        np.array([bool(row[1]) for row in rows_], dtype=bool),
        np.array([row[2] == width for row in rows_], dtype=bool),
        np.frombuffer(blobs, dtype=np.uint8).reshape(len(rows_), width),
        np.array([np.nan if row[4] is None else row[4] for row in rows_], dtype=np.float64),
        _datetimes_ns([row[5] for row in rows_]),
        _datetimes_ns([row[6] for row in rows_]),
    )


async def load_outcome_samples(
    sessions: async_sessionmaker[AsyncSession],
    market: str,
    timeframe: str,
    *,
    window_days: int,
    until: datetime,
    schema: str = "serving",
) -> Samples:
    """Load the window's closed trades as float32 features and ``target_label`` returns."""
    start = until - timedelta(days=window_days)
    window = {"start": start.isoformat(), "end": until.isoformat(), "window_days": window_days, "by": "exit_time"}
    in_window = [*_slot_rows(market, timeframe), _T.exit_time > start, _T.exit_time <= until]
    async with sessions() as session:
        target = await _choose_schema(session, in_window, schema)
        ref = await find_schema(sessions, target) if target else None
        width = 4 * ref.feature_count if ref else 0
        ids, wanted, fits, blobs, labels, entries, exits = await _fetch(
            session, in_window, (market, timeframe, start, until, ref.hash if ref else ""), width
        )
    total = int(ids.shape[0])
    if ref is None:
        rejected = {"unknown_schema": total} if total else {}
        return replace(empty_samples(SOURCE, None, **window), total=total, rejected=rejected)
    usable = wanted & fits
    order = np.lexsort((ids, entries))  # by entry time, then id
    kept = order[usable[order]]
    matrix = np.ascontiguousarray(blobs[kept]).view("<f4")
    return Samples(
        features=matrix.reshape(-1, ref.feature_count),
        labels=labels[kept],
        times=entries[kept],
        total=total,
        label_ends=exits[kept],
        source=SOURCE,
        schema=ref,
        rejected={"other_schema": int((~wanted).sum()), "wrong_length": int((wanted & ~fits).sum())},
        window=window,
    )


def _epoch_ns(seconds: np.ndarray) -> np.ndarray:
    """Epoch seconds (microsecond resolution) as datetime64[ns]."""
    micros = np.rint(np.asarray(seconds, dtype=np.float64) * 1e6).astype(np.int64)
    return micros.astype("datetime64[us]").astype("datetime64[ns]")


def _datetimes_ns(values: list[datetime]) -> np.ndarray:
    index = pd.DatetimeIndex(pd.to_datetime(values, utc=True)).tz_localize(None)
    return np.asarray(index.to_numpy("datetime64[ns]"))

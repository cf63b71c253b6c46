"""Recent candles per (market, timeframe), kept in memory and refilled from the database on a gap.

A batch of candles is cut into :class:`Segment` s: runs of consecutive candles of one (market,
timeframe) with the OHLCV rows ending at the last one, so one ``feature_rows`` call gives the
features of every candle of the run (the same numbers as ``latest_features`` per candle).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Candle
from shared.messages import CandleClosed, timeframe_seconds
from shared.ml.features import LOOKBACK, feature_rows

Row = tuple[datetime, float, float, float, float, float]
Key = tuple[str, str]


@dataclass
class Segment:
    """Consecutive candles of one (market, timeframe) and the OHLCV rows ending at the last one.

    ``rows`` holds ``size - 1 + len(candles)`` rows: candle ``i`` is row ``size - 1 + i``.
    """

    key: Key
    size: int
    rows: list[tuple[float, ...]] = field(default_factory=list)
    candles: list[CandleClosed] = field(default_factory=list)

    def features(self) -> np.ndarray:
        """Float32 features [len(candles), n_features], one row per candle."""
        rows = feature_rows(np.array(self.rows, dtype=np.float64), len(self.candles))
        return rows.astype(np.float32)


class CandleWindows:
    """The last LOOKBACK candles of each (market, timeframe)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], size: int = LOOKBACK) -> None:
        self.sessions = sessions
        self.size = size
        self._windows: dict[Key, deque[Row]] = {}
        self.reloads = 0

    async def _load(self, market: str, timeframe: str, until: datetime) -> deque[Row]:
        self.reloads += 1
        async with self.sessions() as session:
            rows = (
                await session.execute(
                    select(Candle.open_time, Candle.open, Candle.high, Candle.low, Candle.close, Candle.volume)
                    .where(Candle.market == market, Candle.timeframe == timeframe, Candle.open_time <= until)
                    .order_by(Candle.open_time.desc())
                    .limit(self.size)
                )
            ).all()
        return deque((tuple(r) for r in reversed(rows)), maxlen=self.size)  # type: ignore[misc]

    async def _advance(self, candle: CandleClosed) -> deque[Row]:
        """Return the window ending at ``candle`` (the cached one moved forward, or one loaded for it)."""
        key = (candle.market, candle.timeframe)
        window = self._windows.get(key)
        step = timedelta(seconds=timeframe_seconds(candle.timeframe))
        row: Row = (candle.open_time, candle.open, candle.high, candle.low, candle.close, candle.volume)
        if window and window[-1][0] == candle.open_time - step:
            window.append(row)  # the common case: the next candle
        elif not (window and window[-1][0] == candle.open_time):
            loaded = await self._load(candle.market, candle.timeframe, candle.open_time)  # gap, start, or older
            if not loaded or loaded[-1][0] != candle.open_time:
                loaded.append(row)  # not visible in the database yet: the event carries the values
            window = self._windows.get(key)  # another handler may have moved it while this one loaded
            if window is None or candle.open_time > window[-1][0]:
                self._windows[key] = loaded  # the cached window only moves forward
            window = loaded
        return window

    async def window_for(self, candle: CandleClosed) -> np.ndarray | None:
        """Return OHLCV rows (float64 [n, 5]) ending at ``candle``, or None without enough history."""
        window = await self._advance(candle)
        if len(window) < self.size:
            return None
        return np.array([r[1:] for r in window], dtype=np.float64)

    async def segments(self, candles: Sequence[CandleClosed]) -> tuple[list[Segment], list[CandleClosed]]:
        """Cut ``candles`` (stream order) into segments; also return the candles without enough history."""
        segments: list[Segment] = []
        short: list[CandleClosed] = []
        open_runs: dict[Key, Segment] = {}
        for candle in candles:
            key = (candle.market, candle.timeframe)
            window = await self._advance(candle)
            if len(window) < self.size:
                short.append(candle)
                open_runs.pop(key, None)
                continue
            run = open_runs.get(key)
            step = timedelta(seconds=timeframe_seconds(candle.timeframe))
            if (run is not None and len(window) > 1 and window[-2][0] == run.candles[-1].open_time
                    and window[-1][0] == run.candles[-1].open_time + step):
                run.rows.append(window[-1][1:])
                run.candles.append(candle)
                continue
            run = Segment(key=key, size=self.size, rows=[r[1:] for r in window], candles=[candle])
            open_runs[key] = run
            segments.append(run)
        return segments, short

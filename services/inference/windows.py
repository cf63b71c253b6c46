"""Recent candles per (market, timeframe), kept in memory and refilled from the database on a gap.

A batch of candles is cut into :class:`Segment` s: runs of consecutive candles of one (market,
timeframe) with the OHLCV rows ending at the last one (read from each window's float64 ring), so one
``feature_rows`` call gives the features of every candle of the run (the same numbers as
``latest_features`` per candle).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
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

    ``base`` holds the window ending at the first candle ([size, 5]); ``extra`` the rows of the candles
    after it, so candle ``i`` is row ``size - 1 + i`` of ``base`` followed by ``extra``.
    """

    key: Key
    size: int
    base: np.ndarray
    candles: list[CandleClosed] = field(default_factory=list)
    extra: list[np.ndarray] = field(default_factory=list)

    def features(self) -> np.ndarray:
        """Float32 features [len(candles), n_features], one row per candle."""
        rows = np.vstack([self.base, *self.extra]) if self.extra else self.base
        return feature_rows(rows, len(self.candles)).astype(np.float32)


RING_FACTOR = 4
"""A window's ring holds this many windows of rows: one copy of ``size - 1`` rows every ``3 * size`` candles."""


class Window:
    """The last ``size`` candles of one (market, timeframe): open times, and OHLCV rows in a float64 ring.

    The rows stay one contiguous array (the newest ``len(self)`` rows end at ``_end``), so the features of a
    candle read a view instead of converting ``size`` row tuples per candle.
    """

    def __init__(self, rows: Iterable[Row], size: int) -> None:
        self.size = size
        self.times: deque[datetime] = deque(maxlen=size)
        self._ring = np.empty((RING_FACTOR * size, 5), dtype=np.float64)
        self._end = 0
        for row in rows:
            self.append(row)

    def __len__(self) -> int:
        return len(self.times)

    def append(self, row: Row) -> None:
        """Add the newest candle (the oldest leaves once ``size`` are held)."""
        if self._end == self._ring.shape[0]:
            keep = self.size - 1
            self._ring[:keep] = self._ring[self._end - keep : self._end]
            self._end = keep
        self._ring[self._end] = row[1:]
        self._end += 1
        self.times.append(row[0])

    def values(self) -> np.ndarray:
        """The OHLCV rows [len(self), 5], oldest first (a view: copy it to keep it past the next append)."""
        return self._ring[self._end - len(self.times) : self._end]


class CandleWindows:
    """The last LOOKBACK candles of each (market, timeframe)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], size: int = LOOKBACK) -> None:
        self.sessions = sessions
        self.size = size
        self._windows: dict[Key, Window] = {}
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

    async def _advance(self, candle: CandleClosed) -> Window:
        """Return the window ending at ``candle`` (the cached one moved forward, or one loaded for it)."""
        key = (candle.market, candle.timeframe)
        window = self._windows.get(key)
        step = timedelta(seconds=timeframe_seconds(candle.timeframe))
        row: Row = (candle.open_time, candle.open, candle.high, candle.low, candle.close, candle.volume)
        if window and window.times[-1] == candle.open_time - step:
            window.append(row)  # the common case: the next candle
        elif not (window and window.times[-1] == candle.open_time):
            rows = await self._load(candle.market, candle.timeframe, candle.open_time)  # gap, start, or older
            loaded = Window(rows, self.size)
            if not loaded or loaded.times[-1] != candle.open_time:
                loaded.append(row)  # not visible in the database yet: the event carries the values
            window = self._windows.get(key)  # another handler may have moved it while this one loaded
            if window is None or candle.open_time > window.times[-1]:
                self._windows[key] = loaded  # the cached window only moves forward
            window = loaded
        return window

    async def window_for(self, candle: CandleClosed) -> np.ndarray | None:
        """Return OHLCV rows (float64 [n, 5]) ending at ``candle``, or None without enough history."""
        window = await self._advance(candle)
        if len(window) < self.size:
            return None
        return window.values().copy()

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
            times = window.times
            if (run is not None and len(window) > 1 and times[-2] == run.candles[-1].open_time
                    and times[-1] == run.candles[-1].open_time + step):
                run.extra.append(window.values()[-1].copy())
                run.candles.append(candle)
                continue
            run = Segment(key=key, size=self.size, base=window.values().copy(), candles=[candle])
            open_runs[key] = run
            segments.append(run)
        return segments, short

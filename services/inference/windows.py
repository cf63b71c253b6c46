"""Recent candles per (market, timeframe), kept in memory and refilled from the database on a gap."""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Candle
from shared.messages import CandleClosed, timeframe_seconds
from shared.ml.features import LOOKBACK

Row = tuple[datetime, float, float, float, float, float]


class CandleWindows:
    """The last LOOKBACK candles of each (market, timeframe)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], size: int = LOOKBACK) -> None:
        self.sessions = sessions
        self.size = size
        self._windows: dict[tuple[str, str], deque[Row]] = {}
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

    async def window_for(self, candle: CandleClosed) -> np.ndarray | None:
        """Return OHLCV rows (float64 [n, 5]) ending at ``candle``, or None without enough history."""
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
            if window is None or candle.open_time > window[-1][0]:
                self._windows[key] = loaded  # the cached window only moves forward
            window = loaded
        if len(window) < self.size:
            return None
        return np.array([r[1:] for r in window], dtype=np.float64)

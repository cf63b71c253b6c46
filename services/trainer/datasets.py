"""Training data: candles from the database, turned into (features, forward return) samples."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Candle
from shared.messages import timeframe_seconds
from shared.ml.features import LOOKBACK, compute_features, forward_return


async def load_candles(
    sessions: async_sessionmaker[AsyncSession], market: str, timeframe: str, window_days: int
) -> tuple[pd.DataFrame, datetime | None]:
    """Load the last ``window_days`` of candles (plus the feature lookback before them).

    The window ends at the newest stored candle. Returns (candles ascending, window start).
    """
    async with sessions() as session:
        newest = (
            await session.execute(
                select(func.max(Candle.open_time)).where(Candle.market == market, Candle.timeframe == timeframe)
            )
        ).scalar_one_or_none()
        if newest is None:
            return pd.DataFrame(columns=["open_time", "open", "high", "low", "close", "volume"]), None
        window_start = newest - timedelta(days=window_days)
        lower = window_start - timedelta(seconds=timeframe_seconds(timeframe) * LOOKBACK)
        rows = (
            await session.execute(
                select(Candle.open_time, Candle.open, Candle.high, Candle.low, Candle.close, Candle.volume)
                .where(Candle.market == market, Candle.timeframe == timeframe, Candle.open_time >= lower)
                .order_by(Candle.open_time)
            )
        ).all()
    frame = pd.DataFrame(rows, columns=["open_time", "open", "high", "low", "close", "volume"])
    return frame, window_start


@dataclass(frozen=True)
class Samples:
    """Feature rows and labels ordered by time; ``times`` are the candles' open times."""

    features: np.ndarray
    labels: np.ndarray
    times: np.ndarray
    total: int


def bootstrap_samples(candles: pd.DataFrame, window_start: datetime | None, horizon: int) -> Samples:
    """Cold-start samples from candle history: features at t, label = return over the next ``horizon``.

    ``total`` counts samples with a known label in the window; rows with non-finite features are
    kept here and filtered by the caller so both error codes can be told apart.
    """
    if candles.empty or window_start is None:
        empty = np.empty((0, 0), dtype=np.float32)
        return Samples(empty, np.empty(0), np.empty(0, dtype="datetime64[ns]"), 0)
    features = compute_features(candles).to_numpy(dtype=np.float32)
    labels = forward_return(candles["close"].astype("float64"), horizon).to_numpy()
    times = pd.to_datetime(candles["open_time"], utc=True)
    in_window = (times >= pd.Timestamp(window_start)).to_numpy() & np.isfinite(labels)
    return Samples(
        features=features[in_window],
        labels=labels[in_window],
        times=times[in_window].to_numpy(dtype="datetime64[ns]"),
        total=int(in_window.sum()),
    )

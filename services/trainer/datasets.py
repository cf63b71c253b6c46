"""Training data: candles from the database, and the XGBoost family's (features, % return) samples.

Two sources of XGBoost samples: closed-trade outcomes (:mod:`services.trainer.outcomes`, seed 003)
and, at cold start, candle history (:func:`bootstrap_samples`): features at candle t, label = the
forward return over ``horizon`` candles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.trainer.feature_schemas import SchemaRef, serving_schema
from shared.db.models import Candle
from shared.messages import timeframe_seconds
from shared.ml.features import LOOKBACK, compute_features, forward_return

CANDLE_COLUMNS = ["open_time", "open", "high", "low", "close", "volume"]


async def load_candles(
    sessions: async_sessionmaker[AsyncSession],
    market: str,
    timeframe: str,
    window_days: int,
    extra_candles: int = LOOKBACK,
) -> tuple[pd.DataFrame, datetime | None]:
    """Load the last ``window_days`` of candles plus ``extra_candles`` before them (feature lookback).

    The window ends at the newest stored candle. Returns (candles ascending, window start).
    """
    async with sessions() as session:
        newest = (
            await session.execute(
                select(func.max(Candle.open_time)).where(Candle.market == market, Candle.timeframe == timeframe)
            )
        ).scalar_one_or_none()
        if newest is None:
            return pd.DataFrame(columns=CANDLE_COLUMNS), None
        window_start = newest - timedelta(days=window_days)
        lower = window_start - timedelta(seconds=timeframe_seconds(timeframe) * extra_candles)
        rows = (
            await session.execute(
                select(Candle.open_time, Candle.open, Candle.high, Candle.low, Candle.close, Candle.volume)
                .where(Candle.market == market, Candle.timeframe == timeframe, Candle.open_time >= lower)
                .order_by(Candle.open_time)
            )
        ).all()
    frame = pd.DataFrame(rows, columns=CANDLE_COLUMNS)
    return frame, window_start


@dataclass(frozen=True)
class Samples:
    """Feature rows and labels ordered by ``times`` (candle open / trade entry, datetime64[ns]).

    ``label_ends`` says when each label became known (the candle ``horizon`` later / the trade's
    exit); the split purges training rows whose label period reaches into validation. ``total``
    counts every sample in the window, including those dropped for another feature schema
    (``rejected``), so seed 003's two error codes can be told apart.
    """

    features: np.ndarray
    labels: np.ndarray
    times: np.ndarray
    total: int
    label_ends: np.ndarray | None = None
    source: str = "candle_bootstrap"
    schema: SchemaRef = field(default_factory=serving_schema)
    rejected: dict[str, int] = field(default_factory=dict)
    window: dict[str, Any] = field(default_factory=dict)

    @property
    def bootstrap(self) -> bool:
        return self.source == "candle_bootstrap"


def empty_samples(source: str, schema: SchemaRef | None = None, **window: Any) -> Samples:
    """No samples at all."""
    return Samples(
        features=np.empty((0, (schema or serving_schema()).feature_count), dtype=np.float32),
        labels=np.empty(0),
        times=np.empty(0, dtype="datetime64[ns]"),
        total=0,
        label_ends=np.empty(0, dtype="datetime64[ns]"),
        source=source,
        schema=schema or serving_schema(),
        window=window,
    )


def bootstrap_samples(candles: pd.DataFrame, window_start: datetime | None, horizon: int) -> Samples:
    """Cold-start samples from candle history: features at t, label = return over the next ``horizon``.

    ``total`` counts samples with a known label in the window; rows with non-finite features are
    kept here and filtered by the caller so both error codes can be told apart.
    """
    if candles.empty or window_start is None:
        return empty_samples("candle_bootstrap")
    features = compute_features(candles).to_numpy(dtype=np.float32)
    labels = forward_return(candles["close"].astype("float64"), horizon).to_numpy()
    times = pd.to_datetime(candles["open_time"], utc=True)
    label_ends = times.shift(-horizon)
    in_window = (times >= pd.Timestamp(window_start)).to_numpy() & np.isfinite(labels)
    newest = times.iloc[-1]
    return Samples(
        features=features[in_window],
        labels=labels[in_window],
        times=times[in_window].dt.tz_localize(None).to_numpy(dtype="datetime64[ns]"),
        total=int(in_window.sum()),
        label_ends=label_ends[in_window].dt.tz_localize(None).to_numpy(dtype="datetime64[ns]"),
        source="candle_bootstrap",
        window={"start": pd.Timestamp(window_start).isoformat(), "end": newest.isoformat(), "horizon": horizon},
    )

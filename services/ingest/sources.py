"""Candle sources: a deterministic synthetic market and CSV/Parquet imports."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from services.ingest.validation import RawCandle


class CandleSource(Protocol):
    """Where closed candles come from."""

    name: str

    def now_ms(self) -> int:
        """The source's current time (UTC ms); candles with open_time + interval <= now are closed."""
        ...

    async def fetch(self, market: str, interval_ms: int, start_ms: int, end_ms: int) -> list[RawCandle]:
        """Return the closed candles with start_ms <= open_time < end_ms, ascending."""
        ...


class SyntheticMarket:
    """A seedable random walk with trend / range / high-volatility regimes.

    Candle ``k`` after ``origin_ms`` is a pure function of (seed, market, interval, k): any range
    requested in any order gives the same candles.
    """

    REGIME_LENGTH = 240
    REGIMES = ((0.0006, 0.004), (0.0, 0.003), (-0.0004, 0.009), (0.0, 0.006))  # (drift, volatility)

    def __init__(self, seed: int, market: str, interval_ms: int, origin_ms: int) -> None:
        digest = hashlib.sha256(f"{seed}:{market}:{interval_ms}".encode()).digest()
        self.rng_seed = int.from_bytes(digest[:8], "little")
        self.interval_ms = interval_ms
        self.origin_ms = origin_ms - origin_ms % interval_ms
        self.start_price = 100.0 + (self.rng_seed % 50_000) / 10.0
        self._closes = np.empty(0)
        self._opens = np.empty(0)
        self._noise = np.empty((0, 3))

    def _extend(self, count: int) -> None:
        have = self._closes.shape[0]
        if count <= have:
            return
        size = max(count, 2 * have, 1024)
        rng = np.random.default_rng(self.rng_seed)
        regime_rng = np.random.default_rng(self.rng_seed ^ 0x5EED)
        regimes = regime_rng.integers(0, len(self.REGIMES), size // self.REGIME_LENGTH + 1)
        params = np.array(self.REGIMES)[np.repeat(regimes, self.REGIME_LENGTH)[:size]]
        shocks = rng.standard_normal(size)
        log_returns = params[:, 0] + params[:, 1] * shocks
        closes = self.start_price * np.exp(np.cumsum(log_returns))
        opens = np.concatenate(([self.start_price], closes[:-1]))
        self._closes, self._opens = closes, opens
        noise_rng = np.random.default_rng(self.rng_seed ^ 0xA0153)
        self._noise = np.abs(noise_rng.standard_normal((size, 3))) * params[:, 1:2]

    def candles(self, first: int, last: int) -> list[RawCandle]:
        """Return candles with index first..last-1 (index 0 opens at origin)."""
        first = max(first, 0)
        if last <= first:
            return []
        self._extend(last)
        opens, closes = self._opens[first:last], self._closes[first:last]
        noise = self._noise[first:last]
        highs = np.maximum(opens, closes) * (1.0 + 0.5 * noise[:, 0])
        lows = np.minimum(opens, closes) * (1.0 - 0.5 * noise[:, 1])
        volumes = 10.0 * (1.0 + 20.0 * noise[:, 2])
        return [
            RawCandle(
                open_time_ms=self.origin_ms + (first + i) * self.interval_ms,
                open=round(float(opens[i]), 6),
                high=round(float(highs[i]), 6),
                low=round(float(lows[i]), 6),
                close=round(float(closes[i]), 6),
                volume=round(float(volumes[i]), 6),
            )
            for i in range(last - first)
        ]


class SyntheticSource:
    """Synthetic markets on a virtual clock: ``anchor`` at start, advancing ``speed``× wall time."""

    name = "synthetic"

    def __init__(
        self,
        *,
        seed: int,
        anchor: datetime,
        history_candles: int,
        speed: float = 1.0,
        wall_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seed = seed
        self.anchor_ms = int(anchor.astimezone(UTC).timestamp() * 1000)
        self.history_candles = history_candles
        self.speed = speed
        self._wall = wall_clock
        self._started = wall_clock()
        self._markets: dict[tuple[str, int], SyntheticMarket] = {}

    def now_ms(self) -> int:
        return self.anchor_ms + int((self._wall() - self._started) * self.speed * 1000)

    def origin_ms(self, interval_ms: int) -> int:
        """Open time of the first synthetic candle of ``interval_ms``."""
        return self.anchor_ms - self.anchor_ms % interval_ms - self.history_candles * interval_ms

    def _market(self, market: str, interval_ms: int) -> SyntheticMarket:
        key = (market, interval_ms)
        if key not in self._markets:
            self._markets[key] = SyntheticMarket(self.seed, market, interval_ms, self.origin_ms(interval_ms))
        return self._markets[key]

    async def fetch(self, market: str, interval_ms: int, start_ms: int, end_ms: int) -> list[RawCandle]:
        series = self._market(market, interval_ms)
        closed_end = min(end_ms, self.now_ms() - interval_ms + 1)
        first = -(-(start_ms - series.origin_ms) // interval_ms)
        last = -(-(closed_end - series.origin_ms) // interval_ms)
        return series.candles(first, last)


def read_candle_file(path: Path) -> pd.DataFrame:
    """Read a user's history (CSV or Parquet: timestamp, open, high, low, close, volume)."""
    frame = pd.read_parquet(path) if path.suffix.lower() in {".parquet", ".pq"} else pd.read_csv(path)
    missing = {"timestamp", "open", "high", "low", "close", "volume"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    stamps = frame["timestamp"]
    if pd.api.types.is_numeric_dtype(stamps):
        unit = "ms" if stamps.abs().max() > 10**11 else "s"
        parsed = pd.to_datetime(stamps, unit=unit, utc=True)
    else:
        parsed = pd.to_datetime(stamps, utc=True)
    out = frame[["open", "high", "low", "close", "volume"]].astype("float64")
    out.insert(0, "open_time_ms", parsed.dt.as_unit("ms").astype("int64"))
    return out.sort_values("open_time_ms").reset_index(drop=True)


class FileSource:
    """A fixed history from a CSV/Parquet file (everything in it is closed)."""

    name = "csv"

    def __init__(self, path: Path) -> None:
        self.frame = read_candle_file(path)

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    async def fetch(self, market: str, interval_ms: int, start_ms: int, end_ms: int) -> list[RawCandle]:
        times = self.frame["open_time_ms"]
        rows = self.frame[(times >= start_ms) & (times < end_ms)]
        return [RawCandle(int(r[0]), *map(float, r[1:])) for r in rows.itertuples(index=False)]

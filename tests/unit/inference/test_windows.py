"""Candle windows cut a batch into segments whose features equal the per-candle ``latest_features`` exactly."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from services.inference.windows import CandleWindows, Row
from shared.messages import CandleClosed
from shared.ml.features import LOOKBACK, latest_features

START = datetime(2026, 1, 1, tzinfo=UTC)
STEP = timedelta(minutes=1)


def _series(n: int, seed: int) -> list[Row]:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.004, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.004, n))
    volume = rng.uniform(1, 9, n)
    return [(START + i * STEP, float(open_[i]), float(high[i]), float(low[i]), float(close[i]), float(volume[i]))
            for i in range(n)]


class StoredWindows(CandleWindows):
    """Windows whose "database" is an in-memory series per market (1m only)."""

    def __init__(self, series: dict[str, list[Row]]) -> None:
        super().__init__(sessions=None)  # type: ignore[arg-type]
        self.series = series

    async def _load(self, market: str, timeframe: str, until: datetime) -> deque[Row]:
        self.reloads += 1
        rows = [r for r in self.series[market] if r[0] <= until][-self.size:]
        return deque(rows, maxlen=self.size)


def _candle(market: str, row: Row) -> CandleClosed:
    return CandleClosed(market=market, timeframe="1m", open_time=row[0], open=row[1], high=row[2], low=row[3],
                        close=row[4], volume=row[5])


def _expected(series: list[Row], open_time: datetime) -> np.ndarray:
    upto = [r[1:] for r in series if r[0] <= open_time]
    return latest_features(np.array(upto, dtype=np.float64))


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("run_length", [1, 2, 7, 64])
async def test_segment_features_equal_latest_features_of_each_candle(run_length: int) -> None:
    series = {"BTC-EUR": _series(400, 1)}
    windows = StoredWindows(series)
    first = 250
    await windows.segments([_candle("BTC-EUR", series["BTC-EUR"][first - 1])])  # warm the cache
    batch = [_candle("BTC-EUR", row) for row in series["BTC-EUR"][first : first + run_length]]
    segments, short = await windows.segments(batch)
    assert not short and len(segments) == 1 and segments[0].candles == batch
    features = segments[0].features()
    assert features.shape == (run_length, 20) and features.dtype == np.float32
    for candle, row in zip(batch, features, strict=True):
        np.testing.assert_array_equal(row, _expected(series["BTC-EUR"], candle.open_time))
    assert windows.reloads == 1


@pytest.mark.asyncio(loop_scope="session")
async def test_gaps_markets_and_duplicates_start_new_segments() -> None:
    series = {"BTC-EUR": _series(300, 2), "ETH-EUR": _series(300, 3)}
    windows = StoredWindows(series)
    btc, eth = series["BTC-EUR"], series["ETH-EUR"]
    batch = [_candle("BTC-EUR", btc[200]), _candle("ETH-EUR", eth[200]), _candle("BTC-EUR", btc[201]),
             _candle("ETH-EUR", eth[201]), _candle("BTC-EUR", btc[205]), _candle("BTC-EUR", btc[205]),
             _candle("BTC-EUR", btc[206])]
    segments, short = await windows.segments(batch)
    assert not short
    assert [[c.open_time for c in s.candles] for s in segments] == [
        [btc[200][0], btc[201][0]], [eth[200][0], eth[201][0]], [btc[205][0]], [btc[205][0], btc[206][0]]]
    for segment in segments:
        market = segment.key[0]
        for candle, row in zip(segment.candles, segment.features(), strict=True):
            np.testing.assert_array_equal(row, _expected(series[market], candle.open_time))


@pytest.mark.asyncio(loop_scope="session")
async def test_candles_without_enough_history_are_returned_apart() -> None:
    series = {"BTC-EUR": _series(LOOKBACK + 3, 4)}
    windows = StoredWindows(series)
    batch = [_candle("BTC-EUR", row) for row in series["BTC-EUR"][LOOKBACK - 3 : LOOKBACK + 2]]
    segments, short = await windows.segments(batch)
    assert [c.open_time for c in short] == [c.open_time for c in batch[:2]]
    assert len(segments) == 1 and segments[0].candles == batch[2:]


@pytest.mark.asyncio(loop_scope="session")
async def test_an_older_candle_is_predicted_on_its_own_window_without_moving_the_cache() -> None:
    series = {"BTC-EUR": _series(300, 5)}
    windows = StoredWindows(series)
    btc = series["BTC-EUR"]
    await windows.segments([_candle("BTC-EUR", btc[280])])
    segments, _short = await windows.segments([_candle("BTC-EUR", btc[150])])  # a redelivered old candle
    np.testing.assert_array_equal(segments[0].features()[0], _expected(btc, btc[150][0]))
    segments, _short = await windows.segments([_candle("BTC-EUR", btc[281])])
    assert windows.reloads == 2  # the cache still ended at 280: 281 was appended
    np.testing.assert_array_equal(segments[0].features()[0], _expected(btc, btc[281][0]))

"""Synthetic market, CSV/Parquet import and candle validation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from services.ingest.sources import FileSource, SyntheticMarket, SyntheticSource, read_candle_file
from services.ingest.validation import RawCandle, validate_candle

ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)


def test_synthetic_candles_do_not_depend_on_the_requested_range() -> None:
    market = SyntheticMarket(7, "BTC-EUR", 60_000, 0)
    whole = market.candles(0, 3000)
    fresh = SyntheticMarket(7, "BTC-EUR", 60_000, 0)
    assert fresh.candles(2500, 2510) == whole[2500:2510]
    assert all(validate_candle(c, 60_000) is None for c in whole)
    assert SyntheticMarket(8, "BTC-EUR", 60_000, 0).candles(0, 5) != whole[:5]


def test_synthetic_source_only_serves_closed_candles() -> None:
    clock = iter([0.0, 0.0, 0.0])
    source = SyntheticSource(seed=1, anchor=ANCHOR, history_candles=10, speed=1.0, wall_clock=lambda: next(clock))
    origin = source.origin_ms(60_000)
    candles = asyncio.run(source.fetch("BTC-EUR", 60_000, origin, origin + 100 * 60_000))
    assert len(candles) == 10
    assert candles[-1].open_time_ms + 60_000 <= source.anchor_ms


@pytest.mark.parametrize(
    ("candle", "reason"),
    [
        (RawCandle(60_000, 10, 9, 8, 9.5, 1), "high below open/close"),
        (RawCandle(60_000, 10, 11, 10.5, 9.5, 1), "low above open/close"),
        (RawCandle(60_000, 10, 11, 9, 10, -1), "negative volume"),
        (RawCandle(60_001, 10, 11, 9, 10, 1), "open time not aligned to the interval"),
        (RawCandle(60_000, 0, 11, 9, 10, 1), "non-positive price"),
        (RawCandle(60_000, float("nan"), 11, 9, 10, 1), "non-finite value"),
        (RawCandle(60_000, 10, 11, 9, 10, 0), None),
    ],
)
def test_validate_candle(candle: RawCandle, reason: str | None) -> None:
    assert validate_candle(candle, 60_000) == reason


def test_csv_and_parquet_import_read_the_same_history(tmp_path: Path) -> None:
    frame = pd.DataFrame({
        "timestamp": ["2026-01-01T00:01:00Z", "2026-01-01T00:00:00Z"],
        "open": [1.0, 1.1], "high": [1.2, 1.3], "low": [0.9, 1.0], "close": [1.1, 1.2], "volume": [5.0, 6.0],
    })
    frame.to_csv(tmp_path / "h.csv", index=False)
    frame.to_parquet(tmp_path / "h.parquet")
    csv = read_candle_file(tmp_path / "h.csv")
    parquet = read_candle_file(tmp_path / "h.parquet")
    pd.testing.assert_frame_equal(csv, parquet)
    assert list(csv["open_time_ms"]) == [1767225600000, 1767225660000]
    candles = asyncio.run(FileSource(tmp_path / "h.csv").fetch("BTC-EUR", 60_000, 0, 2**62))
    assert [c.open for c in candles] == [1.1, 1.0]


def test_csv_without_required_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("time,open\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_candle_file(tmp_path / "bad.csv")

"""Candle validation: the one place that says what a bad candle is."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RawCandle:
    """An OHLCV candle as a source delivers it; ``open_time_ms`` is the interval start (UTC ms)."""

    open_time_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float


def validate_candle(candle: RawCandle, interval_ms: int) -> str | None:
    """Return why ``candle`` is invalid, or None when it is fine."""
    prices = (candle.open, candle.high, candle.low, candle.close)
    if not all(math.isfinite(p) for p in (*prices, candle.volume)):
        return "non-finite value"
    if min(prices) <= 0:
        return "non-positive price"
    if candle.volume < 0:
        return "negative volume"
    if candle.high < max(candle.open, candle.close):
        return "high below open/close"
    if candle.low > min(candle.open, candle.close):
        return "low above open/close"
    if interval_ms <= 0 or candle.open_time_ms % interval_ms != 0:
        return "open time not aligned to the interval"
    return None

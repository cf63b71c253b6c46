"""Vectorised candlestick and chart pattern detection on OHLC candles (no per-candle Python loops).

Candlestick patterns follow TA-Lib's definitions and default candle settings. "Average" always means
the mean over the candles *before* the one being judged (TA-Lib's ``CandleSettings``):

* body long: real body > mean real body of the previous 10 candles;
* body short: real body < mean real body of the previous 10 candles;
* body doji: real body <= 0.1 x mean high-low range of the previous 10 candles;
* shadow long: shadow > the candle's own real body;
* shadow very short: shadow < 0.1 x mean high-low range of the previous 10 candles;
* near: 0.2 x mean high-low range of the previous 5 candles;
* colour: white when close >= open, else black.

``bullFlag`` is not in TA-Lib; its definition is given in :func:`bull_flag`. Every detector at
candle ``t`` reads only candles ``t - PATTERN_LOOKBACK + 1 .. t`` and windows are summed in the same
order whatever the history length, so training and inference see the same flags.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

_AVERAGE_PERIOD = 10
_NEAR_PERIOD = 5
_DOJI_FACTOR = 0.1
_VERY_SHORT_FACTOR = 0.1
_NEAR_FACTOR = 0.2
STAR_PENETRATION = 0.3
"""How far the third star candle must close into the first candle's real body (TA-Lib default)."""

FLAG_POLE_CANDLES = 5
FLAG_CANDLES = 5
FLAG_VOLATILITY_CANDLES = 20
FLAG_POLE_SIGMAS = 2.0
FLAG_MAX_RETRACE = 0.5


@dataclass(frozen=True, slots=True)
class Ohlc:
    """Candle arrays (float64) and the derived arrays the detectors share (computed once)."""

    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    top: FloatArray
    """Top of the real body, ``max(open, close)``."""
    bottom: FloatArray
    """Bottom of the real body, ``min(open, close)``."""
    body: FloatArray
    """Length of the real body."""
    white: BoolArray
    """TA-Lib colour: white (rising) when close >= open."""
    body_average: FloatArray
    """Mean real body of the previous 10 candles."""
    range_average: FloatArray
    """Mean high-low range of the previous 10 candles."""

    @classmethod
    def from_arrays(cls, open_: FloatArray, high: FloatArray, low: FloatArray, close: FloatArray) -> Ohlc:
        """Derive bodies, colours and averages from the four price arrays."""
        top, bottom = np.maximum(open_, close), np.minimum(open_, close)
        body = top - bottom
        return cls(
            open_, high, low, close, top, bottom, body, close >= open_,
            mean_of_previous(body, _AVERAGE_PERIOD), mean_of_previous(high - low, _AVERAGE_PERIOD),
        )  # fmt: skip

    @classmethod
    def from_frame(cls, candles: pd.DataFrame) -> Ohlc:
        """Read columns open, high, low, close of ``candles``."""
        return cls.from_arrays(*(candles[name].to_numpy(dtype=np.float64) for name in ("open", "high", "low", "close")))

    @property
    def upper_shadow(self) -> FloatArray:
        """High minus the top of the real body."""
        return self.high - self.top

    @property
    def lower_shadow(self) -> FloatArray:
        """Bottom of the real body minus the low."""
        return self.bottom - self.low


def window_reduce(values: FloatArray, width: int, combine: np.ufunc, fill: float = np.nan) -> FloatArray:
    """``combine`` over ``values[t-width+1 .. t]`` at each t, oldest first (``fill`` until full).

    One vectorised pass per offset, in a fixed order, so a value never depends on the history length.
    """
    out = np.full(values.shape[0], fill)
    count = values.shape[0] - width + 1
    if count > 0:
        total = values[:count].copy()
        for offset in range(1, width):
            combine(total, values[offset : offset + count], out=total)
        out[width - 1 :] = total
    return out


def mean_of_previous(values: FloatArray, period: int) -> FloatArray:
    """Return ``mean(values[t-period:t])`` at each ``t`` (NaN while fewer than ``period`` precede it)."""
    return shift(window_reduce(values, period, np.add) / period, 1)


def shift(values: np.ndarray, periods: int, fill: float | bool = np.nan) -> np.ndarray:
    """Return ``values`` delayed by ``periods`` candles (``out[t] = values[t - periods]``)."""
    out = np.full_like(values, fill)
    if periods < values.shape[0]:
        out[periods:] = values[: values.shape[0] - periods]
    return out


def doji(candles: Ohlc) -> BoolArray:
    """TA-Lib CDLDOJI: real body <= 0.1 x average high-low range."""
    return candles.body <= _DOJI_FACTOR * candles.range_average


def hammer(candles: Ohlc) -> BoolArray:
    """TA-Lib CDLHAMMER: short body, lower shadow > body, very short upper shadow, and the body's
    bottom at or near the previous candle's low (``<= low[t-1] + near``)."""
    body = candles.body
    near_range = shift(mean_of_previous(candles.high - candles.low, _NEAR_PERIOD), 1)
    return (
        (body < candles.body_average)
        & (candles.lower_shadow > body)
        & (candles.upper_shadow < _VERY_SHORT_FACTOR * candles.range_average)
        & (candles.bottom <= shift(candles.low, 1) + _NEAR_FACTOR * near_range)
    )


def shooting_star(candles: Ohlc) -> BoolArray:
    """TA-Lib CDLSHOOTINGSTAR: short body, upper shadow > body, very short lower shadow, real body
    gapping up from the previous candle's real body."""
    body = candles.body
    return (
        (body < candles.body_average)
        & (candles.upper_shadow > body)
        & (candles.lower_shadow < _VERY_SHORT_FACTOR * candles.range_average)
        & (candles.bottom > shift(candles.top, 1))
    )


def _engulfs(candles: Ohlc, bullish: bool) -> BoolArray:
    previous_open, previous_close = shift(candles.open, 1), shift(candles.close, 1)
    previous_white = shift(candles.white, 1, fill=False).astype(bool)
    if bullish:
        colours = candles.white & ~previous_white
        upper, lower = candles.close >= previous_open, candles.open <= previous_close
        strict = (candles.close > previous_open) | (candles.open < previous_close)
    else:
        colours = ~candles.white & previous_white
        upper, lower = candles.open >= previous_close, candles.close <= previous_open
        strict = (candles.open > previous_close) | (candles.close < previous_open)
    colours[0] = False
    return np.asarray(colours & upper & lower & strict, dtype=np.bool_)


def bullish_engulfing(candles: Ohlc) -> BoolArray:
    """TA-Lib CDLENGULFING (+): a white body engulfs the previous black body (one edge may be equal)."""
    return _engulfs(candles, bullish=True)


def bearish_engulfing(candles: Ohlc) -> BoolArray:
    """TA-Lib CDLENGULFING (-): a black body engulfs the previous white body (one edge may be equal)."""
    return _engulfs(candles, bullish=False)


def _star(candles: Ohlc, morning: bool) -> BoolArray:
    body, average, top, bottom = candles.body, candles.body_average, candles.top, candles.bottom
    first_body, first_close = shift(body, 2), shift(candles.close, 2)
    first_white = shift(candles.white, 2, fill=False).astype(bool)
    first_long = first_body > shift(average, 2)
    second_short = shift(body, 1) <= shift(average, 1)
    third_longer = body > average
    if morning:
        gap = shift(top, 1) < shift(bottom, 2)
        colours = ~first_white & candles.white
        closes_into = candles.close > first_close + first_body * STAR_PENETRATION
    else:
        gap = shift(bottom, 1) > shift(top, 2)
        colours = first_white & ~candles.white
        closes_into = candles.close < first_close - first_body * STAR_PENETRATION
    colours[:2] = False
    return np.asarray(first_long & second_short & gap & third_longer & colours & closes_into, dtype=np.bool_)


def morning_star(candles: Ohlc) -> BoolArray:
    """TA-Lib CDLMORNINGSTAR (penetration 0.3): long black candle, short body gapping down below it,
    then a white candle longer than short that closes above ``close1 + 0.3 x body1``."""
    return _star(candles, morning=True)


def evening_star(candles: Ohlc) -> BoolArray:
    """TA-Lib CDLEVENINGSTAR (penetration 0.3): long white candle, short body gapping up above it,
    then a black candle longer than short that closes below ``close1 - 0.3 x body1``."""
    return _star(candles, morning=False)


def bull_flag(candles: Ohlc) -> BoolArray:
    """Bull flag breakout at candle ``t`` (not a TA-Lib pattern). With ``F = FLAG_CANDLES`` flag
    candles ``t-F..t-1``, pole top ``s = t-F-1`` and pole start ``b = s - FLAG_POLE_CANDLES``:

    * pole: ``log(close[s]/close[b]) >= 2 x sigma x sqrt(pole candles)``, sigma being the std of
      one-candle log returns over the 20 candles ending at ``b`` (a move unusual for the market);
    * flag: no flag high above ``high[s]``, no flag low below half of the pole
      (``close[b] + 0.5 x (close[s] - close[b])``), and ``close[t-1] <= close[s]`` (drifts sideways/down);
    * breakout: a white candle ``t`` closing above every flag high.
    """
    flag, pole, width = FLAG_CANDLES, FLAG_POLE_CANDLES, FLAG_VOLATILITY_CANDLES
    log_close = np.log(candles.close)
    pole_top_close, pole_start_close = shift(candles.close, flag + 1), shift(candles.close, flag + 1 + pole)
    pole_gain = shift(log_close, flag + 1) - shift(log_close, flag + 1 + pole)
    flag_high = shift(window_reduce(candles.high, flag, np.maximum), 1)
    flag_low = shift(window_reduce(candles.low, flag, np.minimum), 1)
    floor = pole_start_close + FLAG_MAX_RETRACE * (pole_top_close - pole_start_close)
    shape = (
        (pole_gain > 0)
        & (flag_high <= shift(candles.high, flag + 1))
        & (flag_low >= floor)
        & (shift(candles.close, 1) <= pole_top_close)
        & (candles.close > flag_high)
        & candles.white
    )
    # the volatility test is costly: evaluate it only where the shape matched (a few % of candles)
    candidates = np.flatnonzero(shape)
    pole_start = candidates - (flag + 1 + pole)
    candidates, pole_start = candidates[pole_start >= width], pole_start[pole_start >= width]
    returns = np.diff(log_close)  # returns[i] = log(close[i+1] / close[i])
    windows = np.lib.stride_tricks.sliding_window_view(returns, width)[pole_start - width]
    sigma = windows.std(axis=1)  # the `width` returns ending at the pole's start
    flags = np.zeros(candles.close.shape[0], dtype=np.bool_)
    flags[candidates] = pole_gain[candidates] >= FLAG_POLE_SIGMAS * sigma * np.sqrt(pole)
    return flags


PatternDetector = Callable[[Ohlc], BoolArray]

PATTERNS: Mapping[str, PatternDetector] = {
    "bullFlag": bull_flag,
    "bullishEngulfing": bullish_engulfing,
    "bearishEngulfing": bearish_engulfing,
    "hammer": hammer,
    "shootingStar": shooting_star,
    "doji": doji,
    "morningStar": morning_star,
    "eveningStar": evening_star,
}
"""Pattern name (as in seed 000's ``patterns_to_train``) -> detector."""

PATTERN_NAMES: tuple[str, ...] = tuple(PATTERNS)

PATTERN_LOOKBACK = FLAG_VOLATILITY_CANDLES + FLAG_POLE_CANDLES + FLAG_CANDLES + 2
"""Candles a detector reads up to and including ``t`` (bullFlag is the longest)."""


def detect(pattern: str, candles: pd.DataFrame | Ohlc) -> BoolArray:
    """Return a bool per candle: did ``pattern`` complete at that candle? Unknown names raise KeyError."""
    try:
        detector = PATTERNS[pattern]
    except KeyError:
        raise KeyError(f"unknown pattern {pattern!r}; known: {', '.join(PATTERN_NAMES)}") from None
    ohlc = candles if isinstance(candles, Ohlc) else Ohlc.from_frame(candles)
    with np.errstate(invalid="ignore"):
        return np.asarray(detector(ohlc), dtype=bool)


def detect_all(candles: pd.DataFrame) -> dict[str, BoolArray]:
    """Return every registered pattern's flags, in :data:`PATTERN_NAMES` order."""
    ohlc = Ohlc.from_frame(candles)
    return {name: detect(name, ohlc) for name in PATTERN_NAMES}

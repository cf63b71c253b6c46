"""Tabular features from candles: ONE function used by the trainer and by inference.

Every feature at candle ``t`` depends only on candles ``t-LOOKBACK+1 .. t`` (exponential averages
use truncated kernels), so computing it over the whole history (training) or over the last
``LOOKBACK`` candles (inference) gives the same numbers. All loops are vectorised.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

FEATURE_SET_VERSION = 1

FEATURE_NAMES: tuple[str, ...] = (
    "ret_1",
    "ret_3",
    "ret_6",
    "ret_12",
    "ret_24",
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_pct_b",
    "bb_width",
    "volatility_12",
    "volatility_48",
    "range_rel",
    "body_rel",
    "upper_wick_rel",
    "lower_wick_rel",
    "volume_z_20",
    "stoch_14",
    "sma_ratio_10_30",
)

_EMA_SPAN_FAST, _EMA_SPAN_SLOW, _EMA_SPAN_SIGNAL = 12, 26, 9
_KERNEL_FACTOR = 3  # an EMA of span s uses the last 3*s values (weights renormalised)
LOOKBACK = _KERNEL_FACTOR * _EMA_SPAN_SLOW + _KERNEL_FACTOR * _EMA_SPAN_SIGNAL + 2
"""Candles needed to compute the features of the newest candle."""


def feature_schema() -> dict[str, object]:
    """Describe the feature vector (names, order, version, lookback)."""
    return {"version": FEATURE_SET_VERSION, "names": list(FEATURE_NAMES), "lookback": LOOKBACK, "dtype": "float32"}


def feature_schema_hash() -> str:
    """Return the sha256 of :func:`feature_schema`; a model refuses to load under another schema."""
    return hashlib.sha256(json.dumps(feature_schema(), sort_keys=True).encode()).hexdigest()


def truncated_ema(values: np.ndarray, span: int) -> np.ndarray:
    """EMA over the last ``3*span`` values with normalised weights; NaN until the window is full.

    >>> truncated_ema(np.ones(40), 4)[-1]
    1.0
    """
    alpha = 2.0 / (span + 1.0)
    width = _KERNEL_FACTOR * span
    weights = alpha * (1.0 - alpha) ** np.arange(width)
    weights /= weights.sum()
    out = np.full(values.shape[0], np.nan)
    if values.shape[0] >= width:
        out[width - 1 :] = np.convolve(values, weights, mode="valid")
    return out


def _rolling(series: pd.Series, window: int) -> pd.core.window.Rolling:
    return series.rolling(window, min_periods=window)


def compute_features(candles: pd.DataFrame) -> pd.DataFrame:
    """Return one row of :data:`FEATURE_NAMES` per candle (NaN where the lookback is incomplete).

    ``candles`` has columns open, high, low, close, volume, ordered by open time.
    """
    close = candles["close"].astype("float64")
    open_ = candles["open"].astype("float64")
    high = candles["high"].astype("float64")
    low = candles["low"].astype("float64")
    volume = candles["volume"].astype("float64")
    log_close = pd.Series(np.log(close.to_numpy()), index=candles.index)
    ret1 = log_close.diff()
    out: dict[str, pd.Series | np.ndarray] = {}
    for k in (1, 3, 6, 12, 24):
        out[f"ret_{k}"] = log_close - log_close.shift(k)

    gain = ret1.clip(lower=0.0)
    loss = (-ret1).clip(lower=0.0)
    avg_gain = _rolling(gain, 14).mean()
    avg_loss = _rolling(loss, 14).mean()
    total = avg_gain + avg_loss
    out["rsi_14"] = (avg_gain / total.where(total > 0)).fillna(0.5)

    close_np = close.to_numpy()
    macd_line = truncated_ema(close_np, _EMA_SPAN_FAST) - truncated_ema(close_np, _EMA_SPAN_SLOW)
    signal = np.full_like(macd_line, np.nan)
    first = np.argmax(~np.isnan(macd_line)) if np.any(~np.isnan(macd_line)) else macd_line.shape[0]
    signal[first:] = truncated_ema(macd_line[first:], _EMA_SPAN_SIGNAL)
    out["macd"] = macd_line / close_np
    out["macd_signal"] = signal / close_np
    out["macd_hist"] = (macd_line - signal) / close_np

    mid = _rolling(close, 20).mean()
    std = _rolling(close, 20).std(ddof=0)
    band = 4.0 * std
    out["bb_pct_b"] = ((close - (mid - 2.0 * std)) / band.where(band > 0)).fillna(0.5)
    out["bb_width"] = band / mid

    out["volatility_12"] = _rolling(ret1, 12).std(ddof=0)
    out["volatility_48"] = _rolling(ret1, 48).std(ddof=0)
    out["range_rel"] = (high - low) / close
    out["body_rel"] = (close - open_) / open_
    out["upper_wick_rel"] = (high - np.maximum(open_, close)) / close
    out["lower_wick_rel"] = (np.minimum(open_, close) - low) / close
    vol_mean = _rolling(volume, 20).mean()
    vol_std = _rolling(volume, 20).std(ddof=0)
    out["volume_z_20"] = ((volume - vol_mean) / vol_std.where(vol_std > 0)).fillna(0.0).where(vol_mean.notna())
    lowest = _rolling(low, 14).min()
    highest = _rolling(high, 14).max()
    span = highest - lowest
    out["stoch_14"] = ((close - lowest) / span.where(span > 0)).fillna(0.5).where(lowest.notna())
    out["sma_ratio_10_30"] = _rolling(close, 10).mean() / _rolling(close, 30).mean() - 1.0

    frame = pd.DataFrame(out, index=candles.index)[list(FEATURE_NAMES)]
    frame.iloc[: LOOKBACK - 1] = np.nan  # one definition of "complete": the full lookback
    return frame


def latest_features(window: pd.DataFrame) -> np.ndarray:
    """Return the float32 feature vector of the newest candle in ``window`` (≥ LOOKBACK candles)."""
    if len(window) < LOOKBACK:
        raise ValueError(f"need {LOOKBACK} candles, got {len(window)}")
    row = compute_features(window.iloc[-LOOKBACK:]).iloc[-1].to_numpy(dtype=np.float32)
    return row


def forward_return(close: pd.Series, horizon: int) -> pd.Series:
    """Return ``close[t+horizon] / close[t] - 1`` (NaN for the last ``horizon`` candles)."""
    return close.shift(-horizon) / close - 1.0

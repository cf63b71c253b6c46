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

FEATURE_SET_VERSION = 2

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
    return out  # type: ignore[no-any-return]


def _window_terms(values: np.ndarray, window: int) -> list[np.ndarray]:
    """The window's members as aligned vectors: term k holds values[t-k] at row t (rows ≥ window-1)."""
    n = values.shape[0]
    return [values[window - 1 - k : n - k] for k in range(window)]


def _rolling(values: np.ndarray, window: int, reducer: str) -> np.ndarray:
    """Rolling ``mean``/``std``/``min``/``max``; NaN until the window is full.

    Sums run over the window in a fixed order (newest member first), one vector operation per
    member: no n×window temporaries, and row t's result depends only on rows t-window+1..t, so
    the full history and any slice ending at t give bit-identical numbers.
    """
    out = np.full(values.shape[0], np.nan)
    if values.shape[0] < window:
        return out
    terms = _window_terms(values, window)
    if reducer in ("min", "max"):
        combine = np.minimum if reducer == "min" else np.maximum
        result = terms[0].copy()
        for term in terms[1:]:
            combine(result, term, out=result)
    else:
        total = terms[0].copy()
        for term in terms[1:]:
            total += term
        result = total / window
        if reducer == "std":
            squares = (terms[0] - result) ** 2
            for term in terms[1:]:
                squares += (term - result) ** 2
            result = np.sqrt(squares / window)
    out[window - 1 :] = result
    return out


def _shift(values: np.ndarray, k: int) -> np.ndarray:
    out = np.full(values.shape[0], np.nan)
    if values.shape[0] > k:
        out[k:] = values[:-k]
    return out


def _ratio(numerator: np.ndarray, denominator: np.ndarray, fallback: float) -> np.ndarray:
    """numerator / denominator, ``fallback`` where the denominator is 0, NaN where either is NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out: np.ndarray = numerator / denominator
    out[(denominator == 0) & np.isfinite(numerator)] = fallback
    return out


def feature_matrix(ohlcv: np.ndarray) -> np.ndarray:
    """Return float64 features [n, len(FEATURE_NAMES)] for OHLCV rows [n, 5] ordered by time.

    Rows without a full LOOKBACK of history are NaN.
    """
    open_, high, low, close, volume = (ohlcv[:, i].astype(np.float64) for i in range(5))
    n = close.shape[0]
    log_close = np.log(close)
    ret1 = log_close - _shift(log_close, 1)
    columns: list[np.ndarray] = [log_close - _shift(log_close, k) for k in (1, 3, 6, 12, 24)]

    gain = np.where(ret1 > 0, ret1, 0.0)
    loss = np.where(ret1 < 0, -ret1, 0.0)
    gain[np.isnan(ret1)] = np.nan
    loss[np.isnan(ret1)] = np.nan
    avg_gain, avg_loss = _rolling(gain, 14, "mean"), _rolling(loss, 14, "mean")
    columns.append(_ratio(avg_gain, avg_gain + avg_loss, 0.5))

    macd_line = truncated_ema(close, _EMA_SPAN_FAST) - truncated_ema(close, _EMA_SPAN_SLOW)
    signal = np.full(n, np.nan)
    first = _KERNEL_FACTOR * _EMA_SPAN_SLOW - 1
    if n > first:
        signal[first:] = truncated_ema(macd_line[first:], _EMA_SPAN_SIGNAL)
    columns += [macd_line / close, signal / close, (macd_line - signal) / close]

    mid, std = _rolling(close, 20, "mean"), _rolling(close, 20, "std")
    band = 4.0 * std
    columns += [_ratio(close - (mid - 2.0 * std), band, 0.5), band / mid]

    columns += [_rolling(ret1, 12, "std"), _rolling(ret1, 48, "std")]
    columns += [
        (high - low) / close,
        (close - open_) / open_,
        (high - np.maximum(open_, close)) / close,
        (np.minimum(open_, close) - low) / close,
    ]
    vol_mean, vol_std = _rolling(volume, 20, "mean"), _rolling(volume, 20, "std")
    columns.append(_ratio(volume - vol_mean, vol_std, 0.0))
    lowest, highest = _rolling(low, 14, "min"), _rolling(high, 14, "max")
    columns.append(_ratio(close - lowest, highest - lowest, 0.5))
    columns.append(_rolling(close, 10, "mean") / _rolling(close, 30, "mean") - 1.0)

    matrix = np.empty((n, len(columns)), order="F")  # column-major: each feature written contiguously
    for index, column in enumerate(columns):
        matrix[:, index] = column
    matrix[: LOOKBACK - 1] = np.nan  # one definition of "complete": the full lookback
    return matrix


OHLCV = ["open", "high", "low", "close", "volume"]


def compute_features(candles: pd.DataFrame) -> pd.DataFrame:
    """Return one row of :data:`FEATURE_NAMES` per candle (NaN where the lookback is incomplete).

    ``candles`` has columns open, high, low, close, volume, ordered by open time.
    """
    matrix = feature_matrix(candles[OHLCV].to_numpy(dtype=np.float64))
    return pd.DataFrame(matrix, index=candles.index, columns=list(FEATURE_NAMES))


def latest_features(ohlcv: np.ndarray) -> np.ndarray:
    """Return the float32 feature vector of the newest candle of OHLCV rows [n ≥ LOOKBACK, 5]."""
    if ohlcv.shape[0] < LOOKBACK:
        raise ValueError(f"need {LOOKBACK} candles, got {ohlcv.shape[0]}")
    row: np.ndarray = feature_matrix(ohlcv[-LOOKBACK:])[-1].astype(np.float32)
    return row


def forward_return(close: pd.Series, horizon: int) -> pd.Series:
    """Return ``close[t+horizon] / close[t] - 1`` (NaN for the last ``horizon`` candles)."""
    return close.shift(-horizon) / close - 1.0

"""Tabular features from candles: ONE function used by the trainer and by inference.

Every feature at candle ``t`` depends only on candles ``t-LOOKBACK+1 .. t`` (exponential averages
use truncated kernels), so computing it over the whole history (training) or over the last
``LOOKBACK`` candles (inference) gives the same numbers. All loops are vectorised.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math

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


@functools.cache
def _ema_weights(span: int) -> np.ndarray:
    """The normalised kernel of :func:`truncated_ema` (newest value last after np.convolve's flip); read-only."""
    alpha = 2.0 / (span + 1.0)
    width = _KERNEL_FACTOR * span
    weights = alpha * (1.0 - alpha) ** np.arange(width)
    weights /= weights.sum()
    weights.setflags(write=False)
    return weights  # type: ignore[no-any-return]


def truncated_ema(values: np.ndarray, span: int) -> np.ndarray:
    """EMA over the last ``3*span`` values with normalised weights; NaN until the window is full.

    >>> truncated_ema(np.ones(40), 4)[-1]
    1.0
    """
    weights = _ema_weights(span)
    width = weights.shape[0]
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
    row: np.ndarray = feature_rows(ohlcv[-LOOKBACK:], 1)[-1].astype(np.float32)
    return row


# ------------------------------------------------------------------------------ the newest rows only

FAST_ROWS_MAX = 8
"""Up to this many newest rows :func:`feature_rows` computes row by row; more: one :func:`feature_matrix`."""


class _Unusual(Exception):
    """The fast path met a value its scalar arithmetic would treat differently from numpy's: use the reference."""


def feature_rows(ohlcv: np.ndarray, count: int = 1) -> np.ndarray:
    """Return ``feature_matrix(ohlcv)[-count:]`` (float64 [count, n_features]), bit for bit.

    Serving needs the features of a few newest candles, not of the whole window: for up to
    :data:`FAST_ROWS_MAX` rows they are computed row by row, with exactly the operations
    :func:`feature_matrix` performs for that row, in the same order (IEEE-754 adds, multiplies,
    divides and square roots give the same bits in Python floats as in numpy; logarithms and
    EMA convolutions use the same numpy calls on contiguous arrays). Windows with a non-finite
    or non-positive price, non-finite volume, incomplete lookback, or an intermediate the scalar
    path cannot mirror (a division by zero) take the reference :func:`feature_matrix`.
    """
    rows = ohlcv.shape[0]
    need = count + LOOKBACK - 1
    if count < 1 or count > FAST_ROWS_MAX or rows < need:
        return feature_matrix(ohlcv)[rows - count :]
    window = np.asarray(ohlcv[rows - need :], dtype=np.float64)
    if not (np.isfinite(window).all() and (window[:, :4] > 0.0).all()):
        return feature_matrix(ohlcv)[rows - count :]
    try:
        return _fast_rows(window, count)
    except (_Unusual, ZeroDivisionError, ValueError, OverflowError):
        return feature_matrix(ohlcv)[rows - count :]


def _mean(values: list[float], end: int, window: int) -> float:
    """``_rolling(..., "mean")`` at row ``end``: newest member first, one add at a time."""
    total = values[end]
    for k in range(1, window):
        total += values[end - k]
    return total / window


def _std(values: list[float], end: int, window: int) -> float:
    """``_rolling(..., "std")`` at row ``end`` (population std, same order of operations)."""
    mean = _mean(values, end, window)
    first = values[end] - mean
    squares = first * first
    for k in range(1, window):
        term = values[end - k] - mean
        squares += term * term
    return math.sqrt(squares / window)


def _sratio(numerator: float, denominator: float, fallback: float) -> float:
    """:func:`_ratio` for one value (finite numerator; a non-finite one at a zero denominator → reference)."""
    if denominator == 0.0:
        if not math.isfinite(numerator):
            raise _Unusual
        return fallback
    return numerator / denominator


def _fast_rows(window: np.ndarray, count: int) -> np.ndarray:
    """The last ``count`` rows' features of ``window`` ([count + LOOKBACK - 1, 5], finite, prices > 0)."""
    n = window.shape[0]
    columns = np.ascontiguousarray(window.T)  # each column contiguous, as feature_matrix's astype copies are
    open_, high, low, close, volume = columns.tolist()
    log_close_array = np.log(columns[3])
    log_close = log_close_array.tolist()
    ret1 = [math.nan, *(log_close_array[1:] - log_close_array[:-1]).tolist()]
    gain = [r if r > 0 else 0.0 for r in ret1]
    loss = [-r if r < 0 else 0.0 for r in ret1]

    # EMAs with numpy's convolution (same kernel, same dot product per output): MACD of the last
    # count + 26 rows, then its signal for the last count rows.
    span_signal = _KERNEL_FACTOR * _EMA_SPAN_SIGNAL
    macd_rows = count + span_signal - 1
    close_column = columns[3]
    fast = np.convolve(close_column[n - macd_rows - _KERNEL_FACTOR * _EMA_SPAN_FAST + 1 :],
                       _ema_weights(_EMA_SPAN_FAST), mode="valid")
    slow = np.convolve(close_column[n - macd_rows - _KERNEL_FACTOR * _EMA_SPAN_SLOW + 1 :],
                       _ema_weights(_EMA_SPAN_SLOW), mode="valid")
    macd_array = fast - slow
    signal = np.convolve(macd_array, _ema_weights(_EMA_SPAN_SIGNAL), mode="valid").tolist()
    macd = macd_array[span_signal - 1 :].tolist()

    out = np.empty((count, len(FEATURE_NAMES)), dtype=np.float64)
    for index in range(count):
        t = n - count + index
        c, o, h, lo, v = close[t], open_[t], high[t], low[t], volume[t]
        lc = log_close[t]
        avg_gain, avg_loss = _mean(gain, t, 14), _mean(loss, t, 14)
        mid, std = _mean(close, t, 20), _std(close, t, 20)
        band = 4.0 * std
        vol_mean, vol_std = _mean(volume, t, 20), _std(volume, t, 20)
        lowest, highest = min(low[t - 13 : t + 1]), max(high[t - 13 : t + 1])
        macd_t, signal_t = macd[index], signal[index]
        out[index] = (
            lc - log_close[t - 1], lc - log_close[t - 3], lc - log_close[t - 6], lc - log_close[t - 12],
            lc - log_close[t - 24],
            _sratio(avg_gain, avg_gain + avg_loss, 0.5),
            macd_t / c, signal_t / c, (macd_t - signal_t) / c,
            _sratio(c - (mid - 2.0 * std), band, 0.5), band / mid,
            _std(ret1, t, 12), _std(ret1, t, 48),
            (h - lo) / c, (c - o) / o, (h - max(o, c)) / c, (min(o, c) - lo) / c,
            _sratio(v - vol_mean, vol_std, 0.0),
            _sratio(c - lowest, highest - lowest, 0.5),
            _mean(close, t, 10) / _mean(close, t, 30) - 1.0,
        )
    return out


def forward_return(close: pd.Series, horizon: int) -> pd.Series:
    """Return ``close[t+horizon] / close[t] - 1`` (NaN for the last ``horizon`` candles)."""
    return close.shift(-horizon) / close - 1.0

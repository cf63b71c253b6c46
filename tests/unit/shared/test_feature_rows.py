"""The serving path's newest-rows features are bit-identical to the training features (feature_matrix)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from shared.ml import features
from shared.ml.features import FAST_ROWS_MAX, FEATURE_NAMES, LOOKBACK, feature_matrix, feature_rows, latest_features


def _ohlcv(n: int, seed: int, *, sigma: float = 0.01, flat_from: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, sigma, n)))
    if flat_from is not None:
        close[flat_from:] = close[flat_from]
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.005, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.005, n))
    volume = rng.uniform(1, 9, n)
    if flat_from is not None:
        high[flat_from:] = low[flat_from:] = open_[flat_from:] = close[flat_from]
        volume[flat_from:] = 0.0
    return np.column_stack([open_, high, low, close, volume])


def _same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal bit patterns (NaN where NaN, -0.0 distinguished from 0.0)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert np.array_equal(actual.view(np.uint64), expected.view(np.uint64)), np.argwhere(
        actual.view(np.uint64) != expected.view(np.uint64))[:5]


@pytest.mark.parametrize("seed", range(6))
def test_every_row_of_a_long_history_matches_the_training_features(seed: int) -> None:
    ohlcv = _ohlcv(1500, seed, sigma=10 ** -(seed % 4 + 1))
    full = feature_matrix(ohlcv)
    for end in range(LOOKBACK, ohlcv.shape[0] + 1):
        count = 1 + end % FAST_ROWS_MAX
        window = ohlcv[max(0, end - count - LOOKBACK + 1) : end]  # what serving holds: the rows ending at the candle
        _same_bits(feature_rows(window, count), full[end - count : end])


@pytest.mark.parametrize("count", [1, 2, 5, FAST_ROWS_MAX, FAST_ROWS_MAX + 1, 40])
def test_rows_equal_feature_matrix_for_any_count_and_longer_inputs(count: int) -> None:
    ohlcv = _ohlcv(600, 42)
    full = feature_matrix(ohlcv)
    _same_bits(feature_rows(ohlcv, count), full[-count:])
    _same_bits(feature_rows(ohlcv[-(count + LOOKBACK - 1) :], count), full[-count:])
    float32 = ohlcv.astype(np.float32)
    _same_bits(feature_rows(float32, count), feature_matrix(float32)[-count:])


def test_flat_markets_zero_volume_and_zero_denominators_match() -> None:
    ohlcv = _ohlcv(400, 7, flat_from=250)  # std 0, range 0, no gains or losses, zero volume: every fallback
    full = feature_matrix(ohlcv)
    for end in range(LOOKBACK, 400, 3):
        for count in (1, 3):
            _same_bits(feature_rows(ohlcv[:end], count), full[end - count : end])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 0.0, -1.0])
def test_unusual_values_take_the_reference_path(bad: float) -> None:
    ohlcv = _ohlcv(300, 3)
    for column in range(5):
        altered = ohlcv.copy()
        altered[-5, column] = bad
        with np.errstate(all="ignore"):
            expected = feature_matrix(altered)[-3:]
            _same_bits(feature_rows(altered, 3), expected)


def test_short_windows_are_nan_like_the_reference() -> None:
    ohlcv = _ohlcv(LOOKBACK + 2, 5)
    _same_bits(feature_rows(ohlcv, 5), feature_matrix(ohlcv)[-5:])
    assert np.isnan(feature_rows(ohlcv, 5)[:2]).all()


def test_latest_features_is_the_float32_newest_row() -> None:
    ohlcv = _ohlcv(500, 9)
    np.testing.assert_array_equal(latest_features(ohlcv), feature_matrix(ohlcv)[-1].astype(np.float32))
    assert latest_features(ohlcv).shape == (len(FEATURE_NAMES),)


def test_the_fast_path_is_used_and_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    ohlcv = _ohlcv(LOOKBACK, 11)
    calls = []
    reference = features.feature_matrix
    monkeypatch.setattr(features, "feature_matrix", lambda rows: calls.append(1) or reference(rows))
    feature_rows(ohlcv, 1)
    assert calls == []

    def best(function: object, repeat: int = 200) -> float:
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(repeat):
                function()  # type: ignore[operator]
            timings.append(time.perf_counter() - started)
        return min(timings)

    assert best(lambda: feature_rows(ohlcv, 1)) < best(lambda: reference(ohlcv))

"""One feature function for trainer and inference: same numbers over full history or a window."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shared.ml.features import (
    FEATURE_NAMES,
    LOOKBACK,
    compute_features,
    feature_schema_hash,
    forward_return,
    latest_features,
    truncated_ema,
)


def _candles(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.005, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.005, n))
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": rng.uniform(1, 9, n)})


def test_window_features_equal_full_history_features_exactly() -> None:
    candles = _candles(3000)
    full = compute_features(candles).to_numpy(dtype=np.float32)
    ohlcv = candles.to_numpy()
    for t in (LOOKBACK - 1, 1234, 2999):
        np.testing.assert_array_equal(latest_features(ohlcv[: t + 1]), full[t])


def test_rows_without_full_lookback_are_nan_and_later_rows_finite() -> None:
    features = compute_features(_candles(400))
    assert features.shape == (400, len(FEATURE_NAMES))
    assert features.iloc[: LOOKBACK - 1].isna().all().all()
    assert np.isfinite(features.iloc[LOOKBACK - 1 :].to_numpy()).all()


def test_features_do_not_look_ahead() -> None:
    """Changing the future must not change today's features."""
    candles = _candles(500)
    before = compute_features(candles).iloc[300].to_numpy()
    altered = candles.copy()
    altered.loc[301:, ["open", "high", "low", "close"]] *= 1.5
    np.testing.assert_array_equal(compute_features(altered).iloc[300].to_numpy(), before)


def test_latest_features_needs_the_lookback() -> None:
    with pytest.raises(ValueError, match="need"):
        latest_features(_candles(LOOKBACK - 1).to_numpy())


def test_schema_hash_is_stable() -> None:
    assert feature_schema_hash() == feature_schema_hash()
    assert len(feature_schema_hash()) == 64


def test_truncated_ema_of_constant_is_constant() -> None:
    out = truncated_ema(np.full(50, 3.0), 5)
    assert np.isnan(out[:14]).all()
    np.testing.assert_allclose(out[14:], 3.0)


def test_forward_return() -> None:
    close = pd.Series([100.0, 110.0, 121.0])
    np.testing.assert_allclose(forward_return(close, 1).to_numpy()[:2], [0.1, 0.1])
    assert np.isnan(forward_return(close, 1).iloc[-1])

"""Pattern detectors on hand-made candles (averages: body 1, range 2 over the previous candles)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shared.ml.patterns import PATTERN_LOOKBACK, PATTERN_NAMES, PATTERNS, detect, detect_all

Candle = tuple[float, float, float, float]  # open, high, low, close
WHITE: Candle = (100.0, 101.5, 99.5, 101.0)
BLACK: Candle = (101.0, 101.5, 99.5, 100.0)


def frame(rows: list[Candle]) -> pd.DataFrame:
    """Candles from (open, high, low, close) rows."""
    open_, high, low, close = (np.array(column) for column in zip(*rows, strict=True))
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": 1.0})


def fired_at(pattern: str, tail: list[Candle]) -> list[int]:
    """Indices where ``pattern`` fires after twelve ordinary white candles followed by ``tail``."""
    return np.flatnonzero(detect(pattern, frame([WHITE] * 12 + tail))).tolist()


CASES: dict[str, list[Candle]] = {
    "doji": [(100.0, 101.0, 99.0, 100.05)],
    "hammer": [(99.6, 99.9, 98.0, 99.8)],
    "shootingStar": [(101.2, 103.0, 101.15, 101.4)],
    "bullishEngulfing": [BLACK, (99.8, 101.4, 99.7, 101.2)],
    "bearishEngulfing": [(101.2, 101.3, 99.7, 99.8)],
    "morningStar": [(102.0, 102.1, 98.9, 99.0), (98.5, 98.8, 98.4, 98.7), (98.8, 100.6, 98.7, 100.5)],
    "eveningStar": [(100.0, 103.1, 99.9, 103.0), (103.5, 103.8, 103.4, 103.7), (103.4, 103.5, 101.4, 101.5)],
}


@pytest.mark.parametrize("pattern", sorted(CASES))
def test_candlestick_pattern_fires_on_its_last_candle(pattern: str) -> None:
    tail = CASES[pattern]
    assert fired_at(pattern, tail) == [12 + len(tail) - 1]


@pytest.mark.parametrize(
    ("pattern", "tail"),
    [
        ("doji", [(100.0, 101.0, 99.0, 100.5)]),  # body 0.5 > 0.1 x range average
        ("hammer", [(99.6, 100.5, 98.0, 99.8)]),  # upper shadow too long
        ("shootingStar", [(100.8, 103.0, 100.75, 101.0)]),  # no gap above the previous body
        ("bullishEngulfing", [WHITE, (99.8, 101.4, 99.7, 101.2)]),  # previous candle is white
        ("bearishEngulfing", [(100.9, 101.3, 99.7, 99.8)]),  # does not cover the previous close
        ("morningStar", [(102.0, 102.1, 98.9, 99.0), (98.5, 98.8, 98.4, 98.7), (98.8, 99.9, 98.7, 99.8)]),
        ("eveningStar", [(100.0, 103.1, 99.9, 103.0), (102.5, 103.8, 102.4, 102.7), (103.4, 103.5, 101.4, 101.5)]),
    ],
)
def test_near_misses_do_not_fire(pattern: str, tail: list[Candle]) -> None:
    assert fired_at(pattern, tail) == []


def bull_flag_candles() -> list[Candle]:
    """Quiet market, a five-candle pole (+5 %), a five-candle drifting flag, then a breakout."""
    quiet = [(100.5, 100.7, 99.8, 100.0) if i % 2 else (100.0, 100.7, 99.8, 100.5) for i in range(25)]
    quiet[-1] = (100.5, 100.7, 99.8, 100.0)
    pole = [(100.0 + i, 101.3 + i, 99.9 + i, 101.0 + i) for i in range(4)] + [(104.0, 105.3, 103.9, 105.0)]
    flag = [(c + 0.2, c + 0.3, c - 0.4, c) for c in (104.6, 104.4, 104.2, 104.0, 103.9)]
    return [*quiet, *pole, *flag, (103.9, 105.6, 103.8, 105.5)]


def test_bull_flag_fires_on_the_breakout() -> None:
    rows = bull_flag_candles()
    assert np.flatnonzero(detect("bullFlag", frame(rows))).tolist() == [len(rows) - 1]


@pytest.mark.parametrize(
    ("index", "candle"),
    [
        (-1, (103.9, 104.8, 103.8, 104.7)),  # breakout does not clear the flag's high
        (-3, (104.2, 105.6, 103.8, 104.2)),  # flag makes a new high above the pole
        (-3, (104.2, 104.5, 101.0, 104.2)),  # flag retraces more than half the pole
    ],
)
def test_bull_flag_near_misses(index: int, candle: Candle) -> None:
    rows = bull_flag_candles()
    rows[index] = candle
    assert not detect("bullFlag", frame(rows)).any()


def test_bull_flag_needs_an_unusual_pole() -> None:
    rows = bull_flag_candles()
    noisy = [(100.0, 106.0, 94.0, 105.0) if i % 2 else (105.0, 106.0, 94.0, 100.0) for i in range(25)]
    assert not detect("bullFlag", frame(noisy + rows[25:])).any()


def random_candles(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.concatenate([[100.0], close[:-1]]) * (1 + rng.normal(0, 0.002, n))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.004, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.004, n)))
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": 1.0})


def test_every_pattern_fires_sometimes_on_random_candles_and_never_before_its_lookback() -> None:
    flags = detect_all(random_candles(20_000))
    assert list(flags) == list(PATTERN_NAMES)
    for name, fired in flags.items():
        assert fired.dtype == np.bool_ and fired.shape == (20_000,)
        assert 0 < fired.mean() < 0.3, name
        assert not fired[: PATTERN_LOOKBACK - 1 if name == "bullFlag" else 1].any()


def test_flags_do_not_depend_on_future_or_older_candles() -> None:
    candles = random_candles(3000, seed=1)
    full = detect_all(candles)
    cut, start = 2000, 2000 - PATTERN_LOOKBACK
    for name in PATTERNS:
        assert (detect(name, candles.iloc[:cut]) == full[name][:cut]).all(), name
        assert detect(name, candles.iloc[start:cut])[-1] == full[name][cut - 1], name


def test_engulfing_matches_a_plain_loop() -> None:
    candles = random_candles(2000, seed=2)
    o, c = candles["open"].to_numpy(), candles["close"].to_numpy()
    expected = np.zeros(2000, dtype=bool)
    for t in range(1, 2000):
        black_then_white = c[t - 1] < o[t - 1] and c[t] >= o[t]
        covers = c[t] >= o[t - 1] and o[t] <= c[t - 1] and (c[t] > o[t - 1] or o[t] < c[t - 1])
        expected[t] = black_then_white and covers
    np.testing.assert_array_equal(detect("bullishEngulfing", candles), expected)


def test_unknown_pattern_is_refused() -> None:
    with pytest.raises(KeyError, match="unknown pattern"):
        detect("cupAndHandle", random_candles(50))

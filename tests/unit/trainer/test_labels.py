"""First-touch labelling on hand-made candles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shared.ml.labels import (
    Outcome,
    PatternLabelConfig,
    binary_labels,
    classification_metrics,
    first_touch,
    mean_metrics,
    outcome_labels,
    roc_auc,
)

CONFIG = PatternLabelConfig(future_n_candles=3, profit_threshold_pct=2.0, loss_threshold_pct=1.0)


def frame(rows: list[tuple[float, float, float]]) -> pd.DataFrame:
    """Candles from (high, low, close) rows; open = close, volume 1."""
    high, low, close = (np.array(column, dtype=float) for column in zip(*rows, strict=True))
    return pd.DataFrame({"open": close, "high": high, "low": low, "close": close, "volume": 1.0})


def label_of_first(rows: list[tuple[float, float, float]]) -> float:
    """Outcome of candle 0 (entry close 100) given the following candles."""
    candles = frame([(100.0, 100.0, 100.0), *rows, *[(100.0, 100.0, 100.0)] * 3])
    return float(outcome_labels(candles, CONFIG)[0])


def test_profit_touched_first_is_a_win() -> None:
    assert label_of_first([(101.0, 99.5, 100.0), (102.0, 99.5, 101.0), (100.0, 95.0, 96.0)]) == Outcome.WIN


def test_loss_touched_first_is_a_loss() -> None:
    assert label_of_first([(101.0, 99.0, 100.0), (103.0, 99.5, 102.0), (100.0, 99.5, 100.0)]) == Outcome.LOSS


def test_both_touched_on_one_candle_counts_as_loss() -> None:
    assert label_of_first([(100.5, 99.5, 100.0), (102.5, 98.5, 100.0), (103.0, 99.5, 102.0)]) == Outcome.LOSS


def test_neither_touched_is_timeout_and_binary_zero() -> None:
    rows = [(101.9, 99.1, 100.0)] * 3
    assert label_of_first(rows) == Outcome.TIMEOUT
    candles = frame([(100.0, 100.0, 100.0), *rows, *[(100.0, 100.0, 100.0)] * 3])
    assert binary_labels(candles, CONFIG)[0] == 0.0


def test_touch_after_the_horizon_is_ignored() -> None:
    assert label_of_first([(101.0, 99.5, 100.0)] * 3 + [(110.0, 99.5, 100.0)]) == Outcome.TIMEOUT


def test_barrier_equality_counts_as_touch() -> None:
    assert label_of_first([(102.0, 99.5, 100.0), (100.0, 100.0, 100.0), (100.0, 100.0, 100.0)]) == Outcome.WIN
    assert label_of_first([(101.0, 99.0, 100.0), (100.0, 100.0, 100.0), (100.0, 100.0, 100.0)]) == Outcome.LOSS


def test_entry_candle_itself_is_not_scanned() -> None:
    candles = frame([(150.0, 50.0, 100.0), (100.5, 99.5, 100.0), (100.5, 99.5, 100.0), (100.5, 99.5, 100.0)])
    candles = pd.concat([candles, frame([(100.0, 100.0, 100.0)])], ignore_index=True)
    assert outcome_labels(candles, CONFIG)[0] == Outcome.TIMEOUT


def test_last_n_candles_are_nan() -> None:
    candles = frame([(100.0 + i, 99.0 + i, 100.0 + i) for i in range(8)])
    labels = binary_labels(candles, CONFIG)
    assert np.isnan(labels[-3:]).all()
    assert not np.isnan(labels[:-3]).any()


def test_short_series_is_all_nan() -> None:
    assert np.isnan(outcome_labels(frame([(100.0, 100.0, 100.0)] * 2), CONFIG)).all()


def test_vectorised_labels_match_a_plain_loop() -> None:
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 400)))
    high, low = close * (1 + rng.uniform(0, 0.01, 400)), close * (1 - rng.uniform(0, 0.01, 400))
    candles = pd.DataFrame({"open": close, "high": high, "low": low, "close": close, "volume": 1.0})
    config = PatternLabelConfig(future_n_candles=7, profit_threshold_pct=1.5, loss_threshold_pct=1.0)
    expected = np.full(400, np.nan)
    for t in range(400 - 7):
        up, down = close[t] * 1.015, close[t] * 0.99
        expected[t] = Outcome.TIMEOUT
        for k in range(t + 1, t + 8):
            if low[k] <= down:
                expected[t] = Outcome.LOSS
                break
            if high[k] >= up:
                expected[t] = Outcome.WIN
                break
    np.testing.assert_array_equal(outcome_labels(candles, config), expected)


def test_first_touch_on_scattered_starts_stops_at_the_data_end() -> None:
    high = np.array([1.0, 2.0, 5.0, 1.0])
    low = np.array([1.0, 0.5, 1.0, 0.1])
    touch = first_touch(high, low, np.array([0, 2, 3]), np.full(3, 4.0), np.full(3, 0.2), width=3)
    np.testing.assert_array_equal(touch.upper, [2, 0, 3])
    np.testing.assert_array_equal(touch.lower, [3, 1, 0])


@pytest.mark.parametrize(("horizon", "profit", "loss"), [(0, 1.0, 1.0), (3, 0.0, 1.0), (3, 1.0, 100.0)])
def test_config_is_validated(horizon: int, profit: float, loss: float) -> None:
    with pytest.raises(ValueError):
        PatternLabelConfig(future_n_candles=horizon, profit_threshold_pct=profit, loss_threshold_pct=loss)


def test_auc_matches_pairwise_counting_with_ties() -> None:
    rng = np.random.default_rng(5)
    labels = (rng.random(300) < 0.3).astype(float)
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # coarse scores: many ties
    positive, negative = scores[labels == 1], scores[labels == 0]
    pairs = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
    assert roc_auc(labels, scores) == pytest.approx(pairs.mean())
    assert roc_auc(np.ones(5), np.arange(5.0)) is None


def test_classification_metrics_on_a_hand_example() -> None:
    labels = np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    probabilities = np.array([0.9, 0.4, 0.6, 0.1, 0.2])
    metrics = classification_metrics(labels, probabilities)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["precision"] == pytest.approx(1 / 2)
    assert metrics["recall"] == pytest.approx(1 / 2)
    assert metrics["f1"] == pytest.approx(1 / 2)
    assert metrics["auc"] == pytest.approx(5 / 6)
    nothing_predicted = classification_metrics(labels, np.zeros(5))
    assert nothing_predicted["precision"] is None and nothing_predicted["f1"] is None
    assert mean_metrics([{"fold": 1.0, "auc": 0.5}, {"fold": 2.0, "auc": None}, {"fold": 3.0, "auc": 0.7}]) == {
        "auc": pytest.approx(0.6)
    }

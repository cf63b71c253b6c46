"""First-touch ("triple barrier") labelling of candles, vectorised, plus the shared first-touch scan.

For candle ``t`` the entry is ``close[t]``; candles ``t+1 .. t+N`` (``N = future_n_candles``) are
scanned for the first one whose high reaches ``entry x (1 + profit%)`` (take profit) or whose low
reaches ``entry x (1 - loss%)`` (stop loss). Rules:

* WIN (1): the profit barrier is touched on an earlier candle than the loss barrier (or the loss
  barrier is never touched);
* LOSS (0): the loss barrier is touched first, **or on the same candle as the profit barrier**
  (the order inside a candle is unknown, so we are conservative);
* TIMEOUT (2): neither barrier is touched within N candles. :func:`binary_labels` maps it to 0
  ("not a win"), :func:`outcome_labels` keeps it as a third class;
* the last N candles lack a full future and are NaN (even where a barrier is touched early, so a
  label never depends on how much data follows).

The scan loops over the N offsets (a few dozen), each step vectorised over all candles. Scoring
predicted probabilities against these labels (accuracy, precision, recall, F1, AUC) is numpy-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import pandas as pd
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


class Outcome(IntEnum):
    """Outcome codes of :func:`outcome_labels`."""

    LOSS = 0
    WIN = 1
    TIMEOUT = 2


@dataclass(frozen=True, slots=True)
class PatternLabelConfig:
    """One entry of seed 000's ``pattern_labeling_configs``; thresholds are in percent (2.0 = 2 %)."""

    future_n_candles: int
    profit_threshold_pct: float
    loss_threshold_pct: float

    def __post_init__(self) -> None:
        if self.future_n_candles < 1:
            raise ValueError("future_n_candles must be >= 1")
        if not 0 < self.profit_threshold_pct < 1000 or not 0 < self.loss_threshold_pct < 100:
            raise ValueError("thresholds must be positive percentages (loss below 100)")


@dataclass(frozen=True, slots=True)
class FirstTouch:
    """Offsets (0-based, from each scan's first candle) of the first upper/lower barrier touch;
    ``width`` where the barrier is not touched inside the scanned candles."""

    upper: IntArray
    lower: IntArray
    width: int

    @property
    def upper_first(self) -> NDArray[np.bool_]:
        """The upper barrier is touched on a strictly earlier candle than the lower one."""
        return self.upper < self.lower

    @property
    def lower_first(self) -> NDArray[np.bool_]:
        """The lower barrier is touched, on the same candle as the upper one or earlier."""
        return (self.lower < self.width) & (self.lower <= self.upper)


def first_touch(
    high: FloatArray,
    low: FloatArray,
    start: IntArray,
    upper: FloatArray,
    lower: FloatArray,
    width: int,
) -> FirstTouch:
    """Scan candles ``start[i] .. start[i] + width - 1`` for ``high >= upper[i]`` and ``low <= lower[i]``.

    Candles past the end of the data never touch. Cost: ``width`` vectorised passes over ``start``.
    """
    size = high.shape[0]
    padded_high = np.concatenate([high, np.full(width, -np.inf)])
    padded_low = np.concatenate([low, np.full(width, np.inf)])
    start = np.minimum(np.asarray(start, dtype=np.int64), size)
    contiguous = start.shape[0] > 0 and bool(np.all(np.diff(start) == 1))
    upper_offset = np.full(start.shape[0], width, dtype=np.int64)
    lower_offset = np.full(start.shape[0], width, dtype=np.int64)
    for offset in range(width - 1, -1, -1):  # backwards: the last write is the earliest touch
        if contiguous:
            first = int(start[0]) + offset
            high_at = padded_high[first : first + start.shape[0]]
            low_at = padded_low[first : first + start.shape[0]]
        else:
            high_at, low_at = padded_high[start + offset], padded_low[start + offset]
        np.putmask(upper_offset, high_at >= upper, offset)
        np.putmask(lower_offset, low_at <= lower, offset)
    return FirstTouch(upper=upper_offset, lower=lower_offset, width=width)


def outcome_labels(candles: pd.DataFrame, config: PatternLabelConfig) -> FloatArray:
    """Return :class:`Outcome` codes (0 loss, 1 win, 2 timeout) per candle; NaN for the last N."""
    close = candles["close"].to_numpy(dtype=np.float64)
    high = candles["high"].to_numpy(dtype=np.float64)
    low = candles["low"].to_numpy(dtype=np.float64)
    horizon = config.future_n_candles
    touch = first_touch(
        high,
        low,
        np.arange(1, close.shape[0] + 1, dtype=np.int64),
        close * (1.0 + config.profit_threshold_pct / 100.0),
        close * (1.0 - config.loss_threshold_pct / 100.0),
        horizon,
    )
    out = np.where(touch.lower_first, float(Outcome.LOSS), float(Outcome.TIMEOUT))
    out[touch.upper_first] = float(Outcome.WIN)
    out[max(close.shape[0] - horizon, 0) :] = np.nan
    return out


def binary_labels(candles: pd.DataFrame, config: PatternLabelConfig) -> FloatArray:
    """Return 1.0 for WIN, 0.0 for LOSS or TIMEOUT, NaN for the last ``future_n_candles`` candles."""
    outcomes = outcome_labels(candles, config)
    return np.where(np.isnan(outcomes), np.nan, (outcomes == Outcome.WIN).astype(np.float64))


def roc_auc(labels: NDArray[np.float64], scores: NDArray[np.float64]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tied scores sharing their mean rank)."""
    positives = int(labels.sum())
    negatives = int(labels.shape[0]) - positives
    if positives == 0 or negatives == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = float(mean_rank[inverse][labels == 1].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def classification_metrics(
    labels: NDArray[np.float64], probabilities: NDArray[np.float64], threshold: float = 0.5
) -> dict[str, float | None]:
    """Accuracy, precision, recall, F1 (at ``p >= threshold``) and AUC; None where undefined."""
    truth, predicted = labels == 1, probabilities >= threshold
    true_positive = int(np.sum(truth & predicted))
    precision = true_positive / int(predicted.sum()) if predicted.any() else None
    recall = true_positive / int(truth.sum()) if truth.any() else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "accuracy": float(np.mean(truth == predicted)) if labels.size else None,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auc": roc_auc(labels, probabilities),
        "samples": float(labels.shape[0]),
        "positive_rate": float(np.mean(truth)) if labels.size else None,
    }


def mean_metrics(folds: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Mean of each metric over folds, skipping undefined (None) values."""
    names = [name for name in (folds[0] if folds else {}) if name != "fold"]
    means: dict[str, float | None] = {}
    for name in names:
        values = [value for fold in folds if (value := fold.get(name)) is not None]
        means[name] = float(np.mean(values)) if values else None
    return means

"""Honest evaluation helpers: time-ordered splits with a purge gap, direction accuracy, MAE."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TimeSplit:
    """Index ranges of a time-ordered split: train [0, train_end), validation [validation_start, n)."""

    train_end: int
    validation_start: int
    n: int


def purged_split(n: int, validation_fraction: float, purge: int) -> TimeSplit:
    """Split ``n`` time-ordered rows: oldest share to train, newest to validation, ``purge`` rows between.

    A label at row t looks ``purge`` rows ahead, so dropping that many rows after the training part
    means no training label overlaps the validation period.
    """
    train_end = int(np.floor(n * (1.0 - validation_fraction)))
    return TimeSplit(train_end=train_end, validation_start=min(train_end + purge, n), n=n)


def direction_accuracy(predicted: np.ndarray, actual: np.ndarray) -> float | None:
    """Share of rows where the predicted return has the actual return's sign (zero returns ignored)."""
    mask = actual != 0
    if not mask.any():
        return None
    return float(np.mean(np.sign(predicted[mask]) == np.sign(actual[mask])))


def mean_absolute_error(predicted: np.ndarray, actual: np.ndarray) -> float | None:
    """MAE, or None for no rows."""
    if actual.size == 0:
        return None
    return float(np.mean(np.abs(predicted - actual)))

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


@dataclass(frozen=True)
class PurgedSplit:
    """Row indices (into time-ordered rows) of a train / validation split and how many rows the purge dropped."""

    train: np.ndarray
    validation: np.ndarray
    purged: int


def purged_time_split(starts: np.ndarray, ends: np.ndarray, validation_fraction: float) -> PurgedSplit:
    """Split rows ordered by ``starts``: the newest ``validation_fraction`` validates, the rest trains, except
    training rows whose label period (``starts`` .. ``ends``, e.g. a trade's entry .. exit time) reaches the
    first validation row's start: those are purged, so no validation row overlaps a training row's period.
    """
    n = starts.shape[0]
    cut = int(np.floor(n * (1.0 - validation_fraction)))
    if cut <= 0 or cut >= n:
        return PurgedSplit(np.arange(0, dtype=np.int64), np.arange(0, dtype=np.int64), 0)
    keep = ends[:cut] < starts[cut]
    train = np.flatnonzero(keep).astype(np.int64)
    return PurgedSplit(train=train, validation=np.arange(cut, n, dtype=np.int64), purged=int(cut - train.shape[0]))


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

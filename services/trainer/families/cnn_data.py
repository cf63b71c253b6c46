"""CNN family: which windows are samples, and the time-ordered train / validation / test split with purge gaps.

A sample is named by the candle index ``t`` its window ends at; its label looks at candles
``t+1 .. t+N`` (``N = future_n_candles``). A sample is purged from a part when that label horizon
reaches the next part's first window end, so the gap between parts is at least the label horizon.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from services.trainer.families.cnn_config import CnnTrainConfig, CnnTrainingError, IntArray
from shared.messages import RetrainErrorCode
from shared.ml import cnn_model
from shared.ml.labels import PatternLabelConfig, binary_labels


def channels_and_labels(
    candles: pd.DataFrame, label: PatternLabelConfig
) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
    """Input channels and first-touch labels of every candle; on long histories the labels are computed
    in a worker thread alongside the channels (same numbers either way)."""
    if len(candles) < cnn_model.PARALLEL_CANDLES:
        return cnn_model.compute_channels(candles), binary_labels(candles, label)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(binary_labels, candles, label)
        channels = cnn_model.compute_channels(candles)
        return channels, pending.result()


def purge(ends: IntArray, next_first_end: int, horizon: int) -> IntArray:
    """Keep samples whose label horizon ``t+1..t+horizon`` ends before ``next_first_end``."""
    kept: IntArray = ends[ends + horizon < next_first_end]
    return kept


def sample_ends(channels: NDArray[np.float32], labels: NDArray[np.float64], config: CnnTrainConfig) -> IntArray:
    """Candle indices t whose window is complete and label known (and whose pattern fired, if asked)."""
    length = config.sequence_length
    incomplete = np.cumsum(np.concatenate([[0], np.isnan(channels).any(axis=1).astype(np.int64)]))
    ends = np.arange(length - 1, channels.shape[0], dtype=np.int64)
    keep = (incomplete[ends + 1] == incomplete[ends + 1 - length]) & ~np.isnan(labels[ends])
    if config.pattern_windows_only:
        keep &= channels[ends, cnn_model.CHANNEL_NAMES.index(f"pattern_{config.pattern}")] == 1.0
    selected: IntArray = ends[keep]
    return selected


def split(ends: IntArray, config: CnnTrainConfig) -> tuple[IntArray, IntArray, IntArray]:
    """Oldest samples train, then validation, newest test; each earlier part purged before the next."""
    count = ends.shape[0]
    test_count = round(count * config.test_fraction)
    validation_count = round(count * config.validation_fraction)
    train_count = count - test_count - validation_count
    if min(train_count, validation_count, test_count) < 1:
        raise CnnTrainingError(RetrainErrorCode.INSUFFICIENT_SAMPLES, f"{count} samples cannot be split")
    horizon = config.label.future_n_candles
    test = ends[train_count + validation_count :]
    validation = purge(ends[train_count : train_count + validation_count], int(test[0]), horizon)
    train = purge(ends[:train_count], int(validation[0]) if validation.size else int(test[0]), horizon)
    if train.size == 0 or validation.size == 0:
        raise CnnTrainingError(RetrainErrorCode.INSUFFICIENT_SAMPLES, "nothing left after the purge gap")
    return train, validation, test


def cv_folds(ends: IntArray, splits: int, horizon: int) -> list[tuple[IntArray, IntArray]]:
    """Expanding-window time-series CV: fold k trains on blocks 0..k-1 (purged before block k), scores block k."""
    blocks = np.array_split(ends, splits + 1)
    folds: list[tuple[IntArray, IntArray]] = []
    for k in range(1, splits + 1):
        scored = blocks[k]
        if scored.size == 0:
            raise CnnTrainingError(RetrainErrorCode.INSUFFICIENT_SAMPLES, f"CV fold {k} is empty")
        train = purge(np.concatenate(blocks[:k]), int(scored[0]), horizon)
        if train.size == 0:
            raise CnnTrainingError(RetrainErrorCode.INSUFFICIENT_SAMPLES, f"CV fold {k} is empty")
        folds.append((train, scored))
    return folds

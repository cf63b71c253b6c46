"""CNN evaluation: time-series CV folds with a purge gap >= the label horizon, per-fold metrics, backtest window."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from services.trainer.families.cnn import CnnTrainConfig, CnnTrainResult, train_cnn
from services.trainer.families.cnn_data import cv_folds
from shared.ml.labels import PatternLabelConfig

from .test_cnn_family import synthetic_candles

CANDLES = synthetic_candles(1600, seed=4)
CONFIG = CnnTrainConfig(label=PatternLabelConfig(8, 2.0, 1.0), sequence_length=16, num_epochs=1, batch_size=128,
                        perform_cross_validation=True, cv_num_splits=3, perform_backtesting=True)


@pytest.fixture(scope="module")
def trained() -> CnnTrainResult:
    return train_cnn(CANDLES, CONFIG, seed=2)


def test_cv_folds_expand_in_time_with_a_purge_gap() -> None:
    ends = np.arange(100, 1000, dtype=np.int64)
    folds = cv_folds(ends, 3, horizon=8)
    assert len(folds) == 3
    for k, (train, scored) in enumerate(folds):
        assert train[0] == 100 and train[-1] + 8 < scored[0]  # label t+1..t+8 ends before the scored block
        if k:
            assert train.size > folds[k - 1][0].size


def test_per_fold_and_mean_metrics(trained: CnnTrainResult) -> None:
    assert [row["fold"] for row in trained.cross_validation] == [1.0, 2.0, 3.0]
    for name in ("accuracy", "precision", "recall", "f1", "auc"):
        values = [trained.metrics[f"cv_fold{k}_{name}"] for k in (1, 2, 3)]
        defined = [v for v in values if v is not None]
        assert trained.metrics[f"cv_mean_{name}"] == pytest.approx(np.mean(defined) if defined else None)


def test_backtest_starts_at_backtest_from_but_never_before_the_test_part(trained: CnnTrainResult) -> None:
    test_first = trained.split["test"][0]
    assert trained.backtest_span is not None and trained.backtest_span[0] == test_first
    early = train_cnn(CANDLES, dataclasses.replace(CONFIG, backtest_from=10, perform_cross_validation=False), seed=2)
    assert early.backtest_span is not None and early.backtest_span[0] == test_first
    later = test_first + 100
    late = train_cnn(CANDLES, dataclasses.replace(CONFIG, backtest_from=later, perform_cross_validation=False), seed=2)
    assert late.backtest_span is not None and late.backtest_span[0] >= later
    none = train_cnn(CANDLES, dataclasses.replace(CONFIG, backtest_from=len(CANDLES), perform_cross_validation=False),
                     seed=2)
    assert none.backtest is None and not any(name.startswith("backtest_") for name in none.metrics)

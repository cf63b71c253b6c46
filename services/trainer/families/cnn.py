"""CNN family training (seed 000): windows -> first-touch labels -> purged time split -> fit -> bundle.

Choices:

* samples are **all** complete windows; every pattern's flag is an input channel, and the slot's
  pattern picks the label config (TP/SL/horizon) and names the model. With ``pattern_windows_only``
  only windows whose last candle fired the pattern are used (and the predictor then BUYs only on
  that pattern); that needs far more history to reach ``min_samples``;
* time-ordered train / validation / test parts (no shuffling across time); a sample whose label
  horizon ``t+1..t+N`` reaches the next part's first candle is purged (gap >= ``future_n_candles``,
  :mod:`.cnn_data`);
* the scaler is fitted on the training part's candles only (rows ``first_train_end - L + 1 ..
  last_train_end``);
* class imbalance: ``BCEWithLogitsLoss(pos_weight = negatives / positives)`` of the training part;
* early stopping on validation loss (``early_stopping_patience``), the best epoch's weights kept;
* determinism: seeded, deterministic torch on a fixed thread count (:mod:`.cnn_fit`);
* cross-validation (optional) on the train + validation samples: expanding window, ``cv_num_splits``
  folds, same purge, a scaler per fold, fixed ``num_epochs`` (no early stopping on the scored fold);
* backtest (optional) of the test part's probabilities from ``backtest_from`` on (never before the
  test part), see :mod:`services.trainer.backtest`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray

from services.trainer.backtest import BacktestResult, backtest_probabilities
from services.trainer.families.cnn_config import (
    RECORDED,
    CnnTrainConfig,
    CnnTrainingError,
    EpochCallback,
    IntArray,
    Metrics,
    StageCallback,
)
from services.trainer.families.cnn_data import channels_and_labels, purge, sample_ends, split
from services.trainer.families.cnn_fit import Fold, cross_validate, deterministic, fit
from services.trainer.lineage import fingerprint
from shared.messages import RetrainErrorCode
from shared.ml import cnn_model, patterns
from shared.ml.labels import PatternLabelConfig, mean_metrics

__all__ = ["CnnTrainConfig", "CnnTrainResult", "CnnTrainingError", "train_cnn"]


@dataclass(frozen=True)
class CnnTrainResult:
    """Bundle files + metadata for ArtifactStore.put_bundle, and the run's evaluation. ``split`` maps
    each part to the first and last candle index (inclusive) at which its samples' windows end."""

    files: dict[str, bytes]
    metadata: dict[str, Any]
    metrics: Metrics
    cross_validation: list[Metrics]
    history: list[tuple[int, float, float]]
    split: dict[str, tuple[int, int]]
    training_samples: int
    validation_samples: int
    test_samples: int
    test_window_ends: IntArray
    test_probabilities: NDArray[np.float64]
    backtest: BacktestResult | None
    data_fingerprint: str = ""
    backtest_span: tuple[int, int] | None = None
    """First and last candle index the backtest covered."""


def _stage(on_stage: StageCallback | None, stage: str, **detail: Any) -> None:
    if on_stage is not None:
        on_stage(stage, detail)


def _backtest(
    candles: pd.DataFrame, test: IntArray, probabilities: NDArray[np.float64], config: CnnTrainConfig
) -> tuple[BacktestResult | None, tuple[int, int] | None]:
    keep = test >= (config.backtest_from or 0)
    if not keep.any():
        return None, None
    rules = config.backtest_config()
    result = backtest_probabilities(candles, test[keep], probabilities[keep], rules)
    first = int(test[keep][0])
    return result, (first, min(int(test[keep][-1]) + rules.max_holding_candles + 1, len(candles) - 1))


def train_cnn(
    candles: pd.DataFrame,
    config: CnnTrainConfig,
    seed: int,
    *,
    on_epoch: EpochCallback | None = None,
    on_stage: StageCallback | None = None,
) -> CnnTrainResult:
    """Train one CNN version on ``candles`` (open, high, low, close, volume; time-ordered).

    Raises :class:`CnnTrainingError` (INSUFFICIENT_SAMPLES / TOO_FEW_VALID_SAMPLES) when the data
    cannot support a run, ValueError for an unknown pattern or a bad architecture.
    """
    if config.pattern not in patterns.PATTERNS:
        raise ValueError(f"unknown pattern {config.pattern!r}")
    architecture = cnn_model.Architecture.from_config(config.architectures[config.architecture_key])
    _stage(on_stage, "preparing", candles=len(candles))
    channels, labels = channels_and_labels(candles, config.label)
    ends = sample_ends(channels, labels, config)
    if ends.shape[0] < config.min_samples:
        message = f"{ends.shape[0]} samples, need {config.min_samples}"
        raise CnnTrainingError(RetrainErrorCode.INSUFFICIENT_SAMPLES, message)
    train, validation, test = split(ends, config)
    _stage(on_stage, "fitting", train=int(train.size), validation=int(validation.size), test=int(test.size))
    with deterministic(seed, config.torch_threads):
        fold, scaler = Fold.create(channels, labels, train, validation, config.sequence_length)
        model, history = fit(fold, architecture, config, seed, early_stopping=True, on_epoch=on_epoch)
        _stage(on_stage, "evaluating")
        validation_metrics, _ = fold.evaluate(model, validation)
        test_metrics, test_probabilities = fold.evaluate(model, test)
        cross_validation: list[Metrics] = []
        if config.perform_cross_validation:
            _stage(on_stage, "cross_validation", folds=config.cv_num_splits)
            development = purge(ends, int(test[0]), config.label.future_n_candles)
            cross_validation = cross_validate(channels, labels, development, architecture, config, seed, on_stage)
    metrics = {f"validation_{k}": v for k, v in validation_metrics.items()}
    metrics |= {f"test_{k}": v for k, v in test_metrics.items()}
    metrics |= {f"cv_mean_{k}": v for k, v in mean_metrics(cross_validation).items()}
    for row in cross_validation:
        metrics |= {f"cv_fold{int(row['fold'] or 0)}_{k}": v for k, v in row.items() if k != "fold"}
    backtest, span = None, None
    if config.perform_backtesting:
        _stage(on_stage, "backtesting")
        backtest, span = _backtest(candles, test, test_probabilities, config)
        if backtest is not None:
            metrics |= {f"backtest_{k}": v if np.isfinite(v) else None for k, v in backtest.summary().items()}
    metadata = {name: getattr(config, name) for name in RECORDED} | {
        "label": {name: getattr(config.label, name) for name in PatternLabelConfig.__slots__},
        "best_epoch": min(history, key=lambda row: row[2])[0],
        "seed": seed,
        "torch_version": torch.__version__,
        "metrics": metrics,
    }
    files, metadata = cnn_model.make_bundle(
        model, config.architecture_key, architecture, scaler, config.sequence_length, metadata
    )
    parts = {"train": train, "validation": validation, "test": test}
    ohlcv = candles[["open", "high", "low", "close", "volume"]].to_numpy(dtype=np.float64)
    return CnnTrainResult(
        files=files,
        metadata=metadata,
        metrics=metrics,
        cross_validation=cross_validation,
        history=history,
        split={name: (int(part[0]), int(part[-1])) for name, part in parts.items()},
        training_samples=int(train.shape[0]),
        validation_samples=int(validation.shape[0]),
        test_samples=int(test.shape[0]),
        test_window_ends=test,
        test_probabilities=test_probabilities,
        backtest=backtest,
        data_fingerprint=fingerprint(ohlcv, labels),
        backtest_span=span,
    )

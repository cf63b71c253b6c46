"""CNN family: the run configuration, its error type and shared type aliases."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.trainer.backtest import BacktestConfig
from shared.messages import RetrainErrorCode
from shared.ml import cnn_model
from shared.ml.labels import PatternLabelConfig

EpochCallback = Callable[[int, float, float], None]
"""``on_epoch(epoch, train_loss, validation_loss)``, called after every epoch."""
StageCallback = Callable[[str, dict[str, Any]], None]
"""``on_stage(stage, detail)``, called when a stage of :func:`train_cnn` starts (or a CV fold ends)."""
IntArray = NDArray[np.int64]
Metrics = dict[str, float | None]


class CnnTrainingError(ValueError):
    """A CNN run that cannot produce a version; ``code`` goes into RetrainFailed."""

    def __init__(self, code: RetrainErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CnnTrainConfig:
    """Seed 000's parameters for one (pattern, architecture) run; percentages in percent."""

    pattern: str = "bullFlag"
    label: PatternLabelConfig = PatternLabelConfig(10, 2.0, 1.0)  # noqa: RUF009 - frozen, hashable
    architecture_key: str = "default_simple"
    architectures: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: cnn_model.CNN_ARCHITECTURE_CONFIGS)
    sequence_length: int = 30
    num_epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    validation_fraction: float = 0.15
    test_fraction: float = 0.15
    early_stopping_patience: int = 3
    pattern_windows_only: bool = False
    min_samples: int = 200
    decision_threshold: float = 0.5
    perform_cross_validation: bool = False
    cv_num_splits: int = 3
    perform_backtesting: bool = False
    backtest: BacktestConfig | None = None
    """Default: TP / SL / max holding from ``label``, entry at ``decision_threshold``."""
    backtest_from: int | None = None
    """First candle index the backtest may trade on (seed 000's ``backtest_start_date``); it never
    starts before the out-of-sample test part."""
    torch_threads: int = 1
    """Small conv nets on small batches gain little from threads and slow down a lot when the
    machine is busy (like the XGBoost family's ``nthread=1``); the results depend on this count."""

    def backtest_config(self) -> BacktestConfig:
        """The backtest's rules: explicit, or TP / SL / max holding from the label config."""
        label = self.label
        return self.backtest or BacktestConfig(
            entry_threshold=self.decision_threshold,
            take_profit_pct=label.profit_threshold_pct,
            stop_loss_pct=label.loss_threshold_pct,
            max_holding_candles=label.future_n_candles,
        )


RECORDED = (
    "pattern", "pattern_windows_only", "architecture_key", "sequence_length", "num_epochs", "batch_size",
    "learning_rate", "decision_threshold", "perform_cross_validation", "cv_num_splits", "perform_backtesting",
    "validation_fraction", "test_fraction", "early_stopping_patience", "min_samples", "torch_threads",
)  # fmt: skip
"""The config fields a version's metadata records."""

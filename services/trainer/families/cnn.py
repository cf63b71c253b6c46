"""CNN family training (seed 000): windows -> first-touch labels -> purged time split -> fit -> bundle.

Choices:

* samples are **all** complete windows; every pattern's flag is an input channel, and the slot's
  pattern picks the label config (TP/SL/horizon) and names the model. With ``pattern_windows_only``
  only windows whose last candle fired the pattern are used (and the predictor then BUYs only on
  that pattern); that needs far more history to reach ``min_samples``;
* time-ordered train / validation / test parts (no shuffling across time); a sample whose label
  horizon ``t+1..t+N`` reaches the next part's first candle is purged (gap >= ``future_n_candles``);
* the scaler is fitted on the training part's candles only (rows ``first_train_end - L + 1 ..
  last_train_end``);
* class imbalance: ``BCEWithLogitsLoss(pos_weight = negatives / positives)`` of the training part;
* early stopping on validation loss (``early_stopping_patience``), the best epoch's weights kept;
* determinism: seeded RNGs inside ``torch.random.fork_rng``, ``torch.use_deterministic_algorithms``
  and a fixed thread count (``torch_threads``, default 1), all restored afterwards;
* cross-validation (optional) on the train + validation samples: expanding window, ``cv_num_splits``
  folds, same purge, a scaler per fold, fixed ``num_epochs`` (no early stopping on the scored fold);
* backtest (optional) of the test part's probabilities, see :mod:`services.trainer.backtest`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray

from services.trainer.backtest import BacktestConfig, BacktestResult, backtest_probabilities
from shared.messages import RetrainErrorCode
from shared.ml import cnn_model, patterns
from shared.ml.labels import PatternLabelConfig, binary_labels, classification_metrics, mean_metrics

EpochCallback = Callable[[int, float, float], None]
"""``on_epoch(epoch, train_loss, validation_loss)``, called after every epoch."""
IntArray = NDArray[np.int64]
Metrics = dict[str, float | None]
_RECORDED = (
    "pattern", "pattern_windows_only", "architecture_key", "sequence_length", "num_epochs", "batch_size",
    "learning_rate", "decision_threshold", "perform_cross_validation", "cv_num_splits",
)  # fmt: skip
_CHUNK = 4096


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
    torch_threads: int = 1
    """Small conv nets on small batches gain little from threads and slow down a lot when the
    machine is busy (like the XGBoost family's ``nthread=1``); the results depend on this count."""


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


@contextmanager
def _deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seeded, deterministic torch on ``threads`` threads; the process's settings come back after."""
    previous, previous_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous)
            torch.set_num_threads(previous_threads)


def _purge(ends: IntArray, next_first_end: int, horizon: int) -> IntArray:
    """Keep samples whose label horizon ``t+1..t+horizon`` ends before ``next_first_end``."""
    kept: IntArray = ends[ends + horizon < next_first_end]
    return kept


def _sample_ends(channels: NDArray[np.float32], labels: NDArray[np.float64], config: CnnTrainConfig) -> IntArray:
    """Candle indices t whose window is complete and label known (and whose pattern fired, if asked)."""
    length = config.sequence_length
    incomplete = np.cumsum(np.concatenate([[0], np.isnan(channels).any(axis=1).astype(np.int64)]))
    ends = np.arange(length - 1, channels.shape[0], dtype=np.int64)
    keep = (incomplete[ends + 1] == incomplete[ends + 1 - length]) & ~np.isnan(labels[ends])
    if config.pattern_windows_only:
        keep &= channels[ends, cnn_model.CHANNEL_NAMES.index(f"pattern_{config.pattern}")] == 1.0
    selected: IntArray = ends[keep]
    return selected


def _split(ends: IntArray, config: CnnTrainConfig) -> tuple[IntArray, IntArray, IntArray]:
    count = ends.shape[0]
    test_count = round(count * config.test_fraction)
    validation_count = round(count * config.validation_fraction)
    train_count = count - test_count - validation_count
    if min(train_count, validation_count, test_count) < 1:
        raise CnnTrainingError(RetrainErrorCode.INSUFFICIENT_SAMPLES, f"{count} samples cannot be split")
    horizon = config.label.future_n_candles
    test = ends[train_count + validation_count :]
    validation = _purge(ends[train_count : train_count + validation_count], int(test[0]), horizon)
    train = _purge(ends[:train_count], int(validation[0]) if validation.size else int(test[0]), horizon)
    if train.size == 0 or validation.size == 0:
        raise CnnTrainingError(RetrainErrorCode.INSUFFICIENT_SAMPLES, "nothing left after the purge gap")
    return train, validation, test


@dataclass
class _Fold:
    """Scaled windows (a view; row j ends at candle j + L - 1), labels and one train/validation pair."""

    windows: NDArray[np.float32]
    labels: NDArray[np.float64]
    train: IntArray
    validation: IntArray
    length: int

    @classmethod
    def create(
        cls,
        channels: NDArray[np.float32],
        labels: NDArray[np.float64],
        train: IntArray,
        validation: IntArray,
        length: int,
    ) -> tuple[_Fold, cnn_model.Scaler]:
        """Fit the scaler on the training candles and window the scaled channels."""
        scaler = cnn_model.Scaler.fit(channels, int(train[0]) - length + 1, int(train[-1]))
        windows = cnn_model.windows_from_channels(scaler.transform(channels), length)
        return cls(windows, labels, train, validation, length), scaler

    def batch(self, ends: IntArray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.ascontiguousarray(self.windows[ends - self.length + 1])
        return torch.from_numpy(rows), torch.from_numpy(self.labels[ends].astype(np.float32))

    def loss(self, model: cnn_model.PatternCnn, loss_function: torch.nn.Module, ends: IntArray) -> float:
        """Mean loss over ``ends`` (eval mode, chunked)."""
        model.eval()
        total = 0.0
        with torch.no_grad():
            for start in range(0, ends.shape[0], _CHUNK):
                inputs, targets = self.batch(ends[start : start + _CHUNK])
                total += float(loss_function(model(inputs), targets)) * targets.shape[0]
        return total / max(int(ends.shape[0]), 1)

    def evaluate(self, model: cnn_model.PatternCnn, ends: IntArray) -> tuple[Metrics, NDArray[np.float64]]:
        """Classification metrics and p(win) of the samples ``ends``."""
        probabilities = cnn_model.predict_probabilities(model, np.asarray(self.windows[ends - self.length + 1]))
        return classification_metrics(self.labels[ends], probabilities), probabilities


def _loss_function(labels: NDArray[np.float64]) -> torch.nn.BCEWithLogitsLoss:
    positives = float(labels.sum())
    if positives == 0 or positives == labels.shape[0]:
        raise CnnTrainingError(RetrainErrorCode.TOO_FEW_VALID_SAMPLES, "training part holds a single class")
    return torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor((labels.shape[0] - positives) / positives))


def _fit(
    fold: _Fold,
    architecture: cnn_model.Architecture,
    config: CnnTrainConfig,
    seed: int,
    early_stopping: bool,
    on_epoch: EpochCallback | None,
) -> tuple[cnn_model.PatternCnn, list[tuple[int, float, float]]]:
    """Adam on the weighted BCE; returns the best-validation-loss model (or the last one)."""
    model = cnn_model.PatternCnn(architecture, len(cnn_model.CHANNEL_NAMES), config.sequence_length)
    loss_function = _loss_function(fold.labels[fold.train])
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    history: list[tuple[int, float, float]] = []
    best_loss, best_state, waited = float("inf"), None, 0
    for epoch in range(1, config.num_epochs + 1):
        model.train()
        total, seen = 0.0, 0
        order = fold.train[torch.randperm(fold.train.shape[0], generator=generator).numpy()]
        for start in range(0, order.shape[0], config.batch_size):
            chunk = order[start : start + config.batch_size]
            if chunk.shape[0] < 2:  # BatchNorm needs two samples
                continue
            inputs, targets = fold.batch(chunk)
            optimiser.zero_grad()
            loss = loss_function(model(inputs), targets)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            total, seen = total + float(loss.detach()) * chunk.shape[0], seen + chunk.shape[0]
        history.append((epoch, total / max(seen, 1), fold.loss(model, loss_function, fold.validation)))
        if on_epoch is not None:
            on_epoch(*history[-1])
        if history[-1][2] < best_loss:
            best_loss, waited = history[-1][2], 0
            best_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        else:
            waited += 1
            if early_stopping and waited >= config.early_stopping_patience:
                break
    if early_stopping and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history


def _cross_validate(
    channels: NDArray[np.float32],
    labels: NDArray[np.float64],
    ends: IntArray,
    architecture: cnn_model.Architecture,
    config: CnnTrainConfig,
    seed: int,
) -> list[Metrics]:
    """Expanding-window CV over ``ends`` (time-ordered): fold k trains on blocks 0..k-1, scores block k."""
    blocks = np.array_split(ends, config.cv_num_splits + 1)
    folds: list[Metrics] = []
    for k in range(1, config.cv_num_splits + 1):
        scored = blocks[k]
        train = _purge(np.concatenate(blocks[:k]), int(scored[0]), config.label.future_n_candles)
        if train.size == 0 or scored.size == 0:
            raise CnnTrainingError(RetrainErrorCode.INSUFFICIENT_SAMPLES, f"CV fold {k} is empty")
        fold, _ = _Fold.create(channels, labels, train, scored, config.sequence_length)
        model, _ = _fit(fold, architecture, config, seed, early_stopping=False, on_epoch=None)
        folds.append({"fold": float(k), **fold.evaluate(model, scored)[0]})
    return folds


def _backtest_config(config: CnnTrainConfig) -> BacktestConfig:
    label = config.label
    return config.backtest or BacktestConfig(
        entry_threshold=config.decision_threshold,
        take_profit_pct=label.profit_threshold_pct,
        stop_loss_pct=label.loss_threshold_pct,
        max_holding_candles=label.future_n_candles,
    )


def train_cnn(
    candles: pd.DataFrame, config: CnnTrainConfig, seed: int, *, on_epoch: EpochCallback | None = None
) -> CnnTrainResult:
    """Train one CNN version on ``candles`` (open, high, low, close, volume; time-ordered).

    Raises :class:`CnnTrainingError` (INSUFFICIENT_SAMPLES / TOO_FEW_VALID_SAMPLES) when the data
    cannot support a run, ValueError for an unknown pattern or a bad architecture.
    """
    if config.pattern not in patterns.PATTERNS:
        raise ValueError(f"unknown pattern {config.pattern!r}")
    architecture = cnn_model.Architecture.from_config(config.architectures[config.architecture_key])
    channels = cnn_model.compute_channels(candles)
    labels = binary_labels(candles, config.label)
    ends = _sample_ends(channels, labels, config)
    if ends.shape[0] < config.min_samples:
        message = f"{ends.shape[0]} samples, need {config.min_samples}"
        raise CnnTrainingError(RetrainErrorCode.INSUFFICIENT_SAMPLES, message)
    train, validation, test = _split(ends, config)
    with _deterministic(seed, config.torch_threads):
        fold, scaler = _Fold.create(channels, labels, train, validation, config.sequence_length)
        model, history = _fit(fold, architecture, config, seed, early_stopping=True, on_epoch=on_epoch)
        validation_metrics, _ = fold.evaluate(model, validation)
        test_metrics, test_probabilities = fold.evaluate(model, test)
        cross_validation: list[Metrics] = []
        if config.perform_cross_validation:
            development = _purge(ends, int(test[0]), config.label.future_n_candles)
            cross_validation = _cross_validate(channels, labels, development, architecture, config, seed)
    metrics = {f"validation_{k}": v for k, v in validation_metrics.items()}
    metrics |= {f"test_{k}": v for k, v in test_metrics.items()}
    metrics |= {f"cv_mean_{k}": v for k, v in mean_metrics(cross_validation).items()}
    backtest = None
    if config.perform_backtesting:
        backtest = backtest_probabilities(candles, test, test_probabilities, _backtest_config(config))
        metrics |= {f"backtest_{k}": v if np.isfinite(v) else None for k, v in backtest.summary().items()}
    metadata = {name: getattr(config, name) for name in _RECORDED} | {
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
    )

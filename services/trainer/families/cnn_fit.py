"""CNN family: the fit loop (Adam on a class-weighted BCE, early stopping) and time-series cross-validation.

Determinism: seeded RNGs inside ``torch.random.fork_rng``, ``torch.use_deterministic_algorithms``
and a fixed thread count, all restored afterwards. These are process-wide torch settings, so one
fit runs at a time per process (:data:`TORCH_LOCK`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from services.trainer.families.cnn_config import (
    CnnTrainConfig,
    CnnTrainingError,
    EpochCallback,
    IntArray,
    Metrics,
    StageCallback,
)
from services.trainer.families.cnn_data import cv_folds
from shared.messages import RetrainErrorCode
from shared.ml import cnn_model
from shared.ml.labels import classification_metrics

_CHUNK = 4096
TORCH_LOCK = threading.Lock()
"""Held while a CNN trains: torch's seed, determinism flag and thread count are process-wide."""


@contextmanager
def deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seeded, deterministic torch on ``threads`` threads; the process's settings come back after."""
    with TORCH_LOCK:
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


@dataclass
class Fold:
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
    ) -> tuple[Fold, cnn_model.Scaler]:
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


def make_optimiser(model: torch.nn.Module, learning_rate: float) -> torch.optim.Adam:
    """Adam with the fused CPU kernel (about 30 % less time per step than the default for-loop
    implementation on these small nets; deterministic); the multi-tensor one where fused is missing."""
    try:
        return torch.optim.Adam(model.parameters(), lr=learning_rate, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=learning_rate, foreach=True)


def make_loss(labels: NDArray[np.float64]) -> torch.nn.BCEWithLogitsLoss:
    positives = float(labels.sum())
    if positives == 0 or positives == labels.shape[0]:
        raise CnnTrainingError(RetrainErrorCode.TOO_FEW_VALID_SAMPLES, "training part holds a single class")
    return torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor((labels.shape[0] - positives) / positives))


def fit(
    fold: Fold,
    architecture: cnn_model.Architecture,
    config: CnnTrainConfig,
    seed: int,
    early_stopping: bool,
    on_epoch: EpochCallback | None,
) -> tuple[cnn_model.PatternCnn, list[tuple[int, float, float]]]:
    """Adam on the weighted BCE; returns the best-validation-loss model (or the last one)."""
    model = cnn_model.PatternCnn(architecture, len(cnn_model.CHANNEL_NAMES), config.sequence_length)
    loss_function = make_loss(fold.labels[fold.train])
    optimiser = make_optimiser(model, config.learning_rate)
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


def cross_validate(
    channels: NDArray[np.float32],
    labels: NDArray[np.float64],
    ends: IntArray,
    architecture: cnn_model.Architecture,
    config: CnnTrainConfig,
    seed: int,
    on_stage: StageCallback | None = None,
) -> list[Metrics]:
    """Expanding-window CV over ``ends`` (time-ordered), purge gap = label horizon, a scaler per fold,
    fixed ``num_epochs`` (no early stopping on the scored fold). Returns one metrics dict per fold."""
    folds: list[Metrics] = []
    for k, (train, scored) in enumerate(cv_folds(ends, config.cv_num_splits, config.label.future_n_candles), 1):
        fold, _ = Fold.create(channels, labels, train, scored, config.sequence_length)
        model, _ = fit(fold, architecture, config, seed, early_stopping=False, on_epoch=None)
        folds.append({"fold": float(k), **fold.evaluate(model, scored)[0]})
        if on_stage is not None:
            on_stage("cross_validation", {"fold": k, "folds": config.cv_num_splits, **folds[-1]})
    return folds

"""The XGBoost retrain pipeline (CPU-bound part, run off the event loop): check → split → fit → evaluate."""

from __future__ import annotations

import hashlib
import importlib.metadata
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.trainer.datasets import Samples
from services.trainer.evaluation import direction_accuracy, mean_absolute_error, purged_split
from services.trainer.families import xgboost as xgb_family
from shared.messages import RetrainErrorCode


class RetrainError(Exception):
    """A retrain that cannot produce a version; ``code`` is published in RetrainFailed."""

    def __init__(self, code: RetrainErrorCode, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


@dataclass(frozen=True)
class RunConfig:
    """Effective parameters of one run (settings merged with the command's overrides)."""

    min_samples: int
    window_days: int
    horizon: int
    validation_fraction: float
    decision_threshold: float
    params: xgb_family.XGBoostParams


@dataclass
class TrainedModel:
    """A fitted model with its evaluation and lineage, ready to be stored."""

    files: dict[str, bytes]
    metadata: dict[str, Any]
    training_samples: int
    validation_samples: int
    metrics: dict[str, float | None]
    lineage: dict[str, Any]
    durations: dict[str, float] = field(default_factory=dict)


def _library_versions() -> dict[str, str]:
    names = ("xgboost-cpu", "numpy", "pandas", "tradeloop")
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def fingerprint(features: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the exact training rows (features and labels)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(features, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.float64).tobytes())
    return digest.hexdigest()


def check_samples(samples: Samples, config: RunConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply seed 003's two checks; return the valid (features, labels, times)."""
    if samples.total < config.min_samples:
        raise RetrainError(
            RetrainErrorCode.INSUFFICIENT_SAMPLES,
            f"{samples.total} samples in the last {config.window_days} days, need {config.min_samples}",
            samples=samples.total,
            min_samples=config.min_samples,
        )
    valid = np.isfinite(samples.features).all(axis=1) & np.isfinite(samples.labels)
    n_valid = int(valid.sum())
    split = purged_split(n_valid, config.validation_fraction, config.horizon)
    if n_valid < config.min_samples or split.validation_start >= n_valid or split.train_end < 2:
        raise RetrainError(
            RetrainErrorCode.TOO_FEW_VALID_SAMPLES,
            f"{n_valid} valid samples of {samples.total}; need {config.min_samples} "
            f"and a non-empty validation part after a {config.horizon}-row purge gap",
            valid_samples=n_valid,
            samples=samples.total,
        )
    return samples.features[valid], samples.labels[valid], samples.times[valid]


def train_xgboost(samples: Samples, config: RunConfig, window: dict[str, Any]) -> TrainedModel:
    """Train and evaluate on a time-ordered 80/20 split with a purge gap; raise RetrainError."""
    started = time.perf_counter()
    features, labels, times = check_samples(samples, config)
    split = purged_split(len(labels), config.validation_fraction, config.horizon)
    x_train, y_train = features[: split.train_end], labels[: split.train_end]
    x_val, y_val = features[split.validation_start :], labels[split.validation_start :]
    prepared = time.perf_counter()
    booster = xgb_family.fit(x_train, y_train, config.params)
    fitted = time.perf_counter()
    train_pred = xgb_family.predict(booster, x_train)
    val_pred = xgb_family.predict(booster, x_val)
    metrics = {
        "train_accuracy": direction_accuracy(train_pred, y_train),
        "validation_accuracy": direction_accuracy(val_pred, y_val),
        "train_mae": mean_absolute_error(train_pred, y_train),
        "validation_mae": mean_absolute_error(val_pred, y_val),
        "validation_baseline_mae": mean_absolute_error(np.zeros_like(y_val), y_val),
    }
    lineage = {
        "source": "candle_bootstrap",
        "bootstrap": True,
        "window": window,
        "train_period": [str(times[0]), str(times[split.train_end - 1])],
        "validation_period": [str(times[split.validation_start]), str(times[-1])],
        "purge_rows": config.horizon,
        "rows_fingerprint": fingerprint(features, labels),
        "samples_total": samples.total,
        "samples_valid": len(labels),
        "libraries": _library_versions(),
    }
    files, metadata = xgb_family.bundle(
        booster,
        {
            "decision_threshold": config.decision_threshold,
            "confidence_scale": metrics["validation_mae"] or 0.01,
            "horizon": config.horizon,
        },
    )
    return TrainedModel(
        files=files,
        metadata=metadata,
        training_samples=len(y_train),
        validation_samples=len(y_val),
        metrics=metrics,
        lineage=lineage,
        durations={
            "prepare_seconds": prepared - started,
            "fit_seconds": fitted - prepared,
            "evaluate_seconds": time.perf_counter() - fitted,
        },
    )

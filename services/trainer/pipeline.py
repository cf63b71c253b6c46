"""The XGBoost retrain pipeline (CPU-bound part, run off the event loop): check → split → fit → evaluate.

Seed 003: the label is the trade's % return (``target_label``); the newest 20 % validates, split
by time; train/validation direction accuracy and MAE are reported. Training rows whose label period
(entry .. exit of a trade, or candle t .. t+horizon at cold start) reaches the first validation
row are purged, so no validation row overlaps a training row's holding period.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.trainer.datasets import Samples
from services.trainer.evaluation import direction_accuracy, mean_absolute_error, purged_time_split
from services.trainer.families import xgboost as xgb_family
from services.trainer.lineage import environment
from services.trainer.lineage import fingerprint as _fingerprint
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
    feature_schema_hash: str = ""


def fingerprint(features: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the exact training rows (features and labels)."""
    return _fingerprint(np.asarray(features, dtype=np.float32), np.asarray(labels, dtype=np.float64))


def _label_ends(samples: Samples, horizon: int) -> np.ndarray:
    """Each row's label end; rows without their own (hand-made samples) look ``horizon`` rows ahead."""
    if samples.label_ends is not None:
        return samples.label_ends
    times = samples.times
    count = times.shape[0]
    ends = np.empty_like(times)
    if count:
        ends[: max(count - horizon, 0)] = times[horizon:]
        ends[max(count - horizon, 0) :] = times[-1] + np.timedelta64(1, "ns")
    return ends


def check_samples(samples: Samples, config: RunConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Apply seed 003's two checks; return the valid (features, labels, times, label ends)."""
    if samples.total < config.min_samples:
        raise RetrainError(
            RetrainErrorCode.INSUFFICIENT_SAMPLES,
            f"{samples.total} samples in the last {config.window_days} days, need {config.min_samples}",
            samples=samples.total,
            min_samples=config.min_samples,
        )
    valid = np.isfinite(samples.features).all(axis=1) & np.isfinite(samples.labels)
    ends = _label_ends(samples, config.horizon)
    n_valid = int(valid.sum())
    times, label_ends = samples.times[valid], ends[valid]
    split = purged_time_split(times, label_ends, config.validation_fraction)
    if n_valid < config.min_samples or split.validation.size == 0 or split.train.size < 2:
        raise RetrainError(
            RetrainErrorCode.TOO_FEW_VALID_SAMPLES,
            f"{n_valid} valid samples of {samples.total} (feature schema {samples.schema.hash[:12]}, "
            f"{samples.schema.feature_count} finite features and a finite label); need {config.min_samples} "
            "and non-empty training and validation parts after the purge",
            valid_samples=n_valid,
            samples=samples.total,
            rejected=samples.rejected,
        )
    features = samples.features if n_valid == samples.features.shape[0] else samples.features[valid]
    return features, samples.labels[valid], times, label_ends


def train_xgboost(samples: Samples, config: RunConfig, window: dict[str, Any] | None = None) -> TrainedModel:
    """Train and evaluate on a time-ordered 80/20 split with a purge gap; raise RetrainError."""
    started = time.perf_counter()
    features, labels, times, label_ends = check_samples(samples, config)
    split = purged_time_split(times, label_ends, config.validation_fraction)
    first_validation = int(split.validation[0])
    contiguous = split.train.shape[0] == int(split.train[-1]) + 1
    x_train = features[: split.train.shape[0]] if contiguous else features[split.train]
    y_train = labels[split.train]
    x_val, y_val = features[first_validation:], labels[first_validation:]
    prepared = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:  # hashing releases the GIL: it overlaps the fit
        rows_fingerprint = pool.submit(fingerprint, features, labels)
        booster = xgb_family.fit(x_train, y_train, config.params)
        fitted = time.perf_counter()
        digest = rows_fingerprint.result()
    train_pred = xgb_family.predict(booster, x_train, config.params.nthread)
    val_pred = xgb_family.predict(booster, x_val, config.params.nthread)
    metrics = {
        "train_accuracy": direction_accuracy(train_pred, y_train),
        "validation_accuracy": direction_accuracy(val_pred, y_val),
        "train_mae": mean_absolute_error(train_pred, y_train),
        "validation_mae": mean_absolute_error(val_pred, y_val),
        "validation_baseline_mae": mean_absolute_error(np.zeros_like(y_val), y_val),
    }
    evaluated = time.perf_counter()
    lineage = {
        "source": samples.source,
        "bootstrap": samples.bootstrap,
        "window": {**samples.window, **(window or {})},
        "feature_schema_hash": samples.schema.hash,
        "feature_count": samples.schema.feature_count,
        "train_period": [str(times[int(split.train[0])]), str(times[int(split.train[-1])])],
        "validation_period": [str(times[first_validation]), str(times[-1])],
        "purge": {"rule": "train label period ends before the first validation row starts",
                  "purged_rows": split.purged},
        "rows_fingerprint": digest,
        "samples_total": samples.total,
        "samples_valid": int(labels.shape[0]),
        "samples_train": int(y_train.shape[0]),
        "samples_validation": int(y_val.shape[0]),
        "samples_rejected": dict(samples.rejected),
        "seeds": {"xgboost": config.params.seed},
        **environment(),
    }
    files, metadata = xgb_family.bundle(
        booster,
        {
            "decision_threshold": config.decision_threshold,
            "confidence_scale": metrics["validation_mae"] or 0.01,
            "horizon": config.horizon,
            "source": samples.source,
        },
        schema=samples.schema,
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
            "evaluate_seconds": evaluated - fitted,
            "bundle_seconds": time.perf_counter() - evaluated,
        },
        feature_schema_hash=samples.schema.hash,
    )

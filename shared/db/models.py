"""Tables. Model versions and activation history are write-once; aliases (champions) move."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import expression, func

from shared.db.types import BigId, Float32Vector, UTCDateTime

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Json = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Candle(Base):
    """One closed OHLCV candle; unique per (market, timeframe, open_time)."""

    __tablename__ = "candles"
    __table_args__ = (UniqueConstraint("market", "timeframe", "open_time", name="uq_candles_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    market: Mapped[str] = mapped_column(String(32))
    timeframe: Mapped[str] = mapped_column(String(8))
    open_time: Mapped[datetime] = mapped_column(UTCDateTime())
    open: Mapped[float] = mapped_column(Float)
    high: Mapped[float] = mapped_column(Float)
    low: Mapped[float] = mapped_column(Float)
    close: Mapped[float] = mapped_column(Float)
    volume: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(32), default="unknown")
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.current_timestamp())


class TrainingSample(Base):
    """A prediction with its features and, once the trade closed, its outcome (seed 003's AITrainingSample)."""

    __tablename__ = "training_samples"
    __table_args__ = (Index("ix_training_samples_outcome", "outcome_known", "timestamp"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    prediction_id: Mapped[str | None] = mapped_column(String(36), unique=True)
    symbol: Mapped[str] = mapped_column(String(32))
    timeframe: Mapped[str | None] = mapped_column(String(8))
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime())
    model_version_id: Mapped[str | None] = mapped_column(String(64))
    predicted_action: Mapped[str] = mapped_column(String(8))
    prediction_confidence: Mapped[float] = mapped_column(Float)
    features: Mapped[np.ndarray] = mapped_column(Float32Vector())
    feature_count: Mapped[int] = mapped_column(Integer)
    feature_schema_hash: Mapped[str | None] = mapped_column(String(64))
    executed: Mapped[bool] = mapped_column(Boolean, server_default=expression.false())
    execution_side: Mapped[str | None] = mapped_column(String(8))
    quantity: Mapped[float | None] = mapped_column(Float)
    entry_price: Mapped[float | None] = mapped_column(Float)
    entry_time: Mapped[datetime | None] = mapped_column(UTCDateTime())
    entry_fee: Mapped[float | None] = mapped_column(Float)
    exit_price: Mapped[float | None] = mapped_column(Float)
    exit_time: Mapped[datetime | None] = mapped_column(UTCDateTime())
    exit_fee: Mapped[float | None] = mapped_column(Float)
    realized_pnl: Mapped[float | None] = mapped_column(Float)
    target_label: Mapped[float | None] = mapped_column(Float)
    target_class: Mapped[str | None] = mapped_column(String(8))
    outcome_known: Mapped[bool] = mapped_column(Boolean, server_default=expression.false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.current_timestamp())


class ModelVersion(Base):
    """An immutable trained version (seed 003's AIModelVersion plus slot, artifact and lineage)."""

    __tablename__ = "model_versions"
    __table_args__ = (Index("ix_model_versions_slot", "slot_key", "trained_at"),)

    version_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    slot_key: Mapped[str] = mapped_column(String(128))
    family: Mapped[str] = mapped_column(String(16))
    market: Mapped[str] = mapped_column(String(32))
    timeframe: Mapped[str] = mapped_column(String(8))
    pattern: Mapped[str | None] = mapped_column(String(64))
    model_type: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(String(64))
    trained_at: Mapped[datetime] = mapped_column(UTCDateTime())
    training_samples: Mapped[int] = mapped_column(Integer)
    validation_samples: Mapped[int] = mapped_column(Integer)
    train_accuracy: Mapped[float | None] = mapped_column(Float)
    validation_accuracy: Mapped[float | None] = mapped_column(Float)
    train_mae: Mapped[float | None] = mapped_column(Float)
    validation_mae: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(Json)
    params: Mapped[dict[str, Any]] = mapped_column(Json)
    lineage: Mapped[dict[str, Any]] = mapped_column(Json)
    artifact_path: Mapped[str] = mapped_column(Text)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    artifact_size: Mapped[int] = mapped_column(Integer)
    feature_schema_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), server_default="ready")
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.current_timestamp())


class VersionStats(Base):
    """Live accuracy and P&L of a version (seed 003's live fields), updated as outcomes arrive."""

    __tablename__ = "version_stats"

    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.version_id"), primary_key=True)
    total_predictions: Mapped[int] = mapped_column(Integer, default=0)
    correct_predictions: Mapped[int] = mapped_column(Integer, default=0)
    total_pnl: Mapped[float] = mapped_column(Float, default=0.0)


class SlotChampion(Base):
    """The movable alias: which version is champion of a slot, at which epoch."""

    __tablename__ = "slot_champions"

    slot_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.version_id"))
    epoch: Mapped[int] = mapped_column(Integer)
    activated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ActivationHistory(Base):
    """Append-only record of every champion change: from, to, who, why, when, which policy."""

    __tablename__ = "activation_history"
    __table_args__ = (
        UniqueConstraint("slot_key", "epoch", name="uq_activation_history_slot_epoch"),
        Index("ix_activation_history_slot_time", "slot_key", "activated_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    slot_key: Mapped[str] = mapped_column(String(128))
    epoch: Mapped[int] = mapped_column(Integer)
    from_version_id: Mapped[str | None] = mapped_column(String(64))
    to_version_id: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    policy: Mapped[str] = mapped_column(String(32), default="manual")
    command_event_id: Mapped[str | None] = mapped_column(String(36), unique=True)
    activated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RetrainRun(Base):
    """One retrain run: status, error code and stage durations."""

    __tablename__ = "retrain_runs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    slot_key: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    version_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    requested_by: Mapped[str] = mapped_column(String(128))
    command_event_id: Mapped[str] = mapped_column(String(36))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    durations: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(Json)


class Prediction(Base):
    """A prediction served by inference, with its features, for joining outcomes later."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("version_id", "market", "timeframe", "candle_open_time", name="uq_predictions_key"),
    )

    prediction_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    slot_key: Mapped[str] = mapped_column(String(128))
    version_id: Mapped[str] = mapped_column(String(64), index=True)
    market: Mapped[str] = mapped_column(String(32))
    timeframe: Mapped[str] = mapped_column(String(8))
    candle_open_time: Mapped[datetime] = mapped_column(UTCDateTime())
    action: Mapped[str] = mapped_column(String(8))
    confidence: Mapped[float] = mapped_column(Float)
    predicted_return: Mapped[float] = mapped_column(Float)
    shadow: Mapped[bool] = mapped_column(Boolean, server_default=expression.false())
    features: Mapped[np.ndarray] = mapped_column(Float32Vector())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

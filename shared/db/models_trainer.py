"""Tables owned by the trainer service (declared on the shared metadata; migration 0003_trainer).

* ``feature_schemas``: the feature vectors stored in ``training_samples`` are named by their
  ``feature_schema_hash``; this table maps the hash to the schema (ordered feature names, version,
  dtype). Whoever writes samples registers the schema once; the trainer trains only on rows of
  one registered schema and ships that schema inside the model bundle.
* ``trainer_slot_leases``: at most one retrain run per slot at a time, across replicas. A run
  holds its slot's row and renews ``heartbeat_at``; a row whose heartbeat is older than the stale
  limit may be taken over. A command for a slot held by another live run is coalesced.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql import func

from shared.db.models import Base, Json, TrainingSample
from shared.db.types import UTCDateTime


class FeatureSchema(Base):
    """A feature vector layout, addressed by the sha256 of its canonical JSON."""

    __tablename__ = "feature_schemas"

    schema_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    feature_count: Mapped[int] = mapped_column(Integer)
    schema: Mapped[dict[str, Any]] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.current_timestamp())


class TrainerSlotLease(Base):
    """The run currently training a slot (one row per slot while a run holds it)."""

    __tablename__ = "trainer_slot_leases"

    slot_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(255))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())


OUTCOME_INDEX = Index(
    "ix_training_samples_symbol_exit", TrainingSample.symbol, TrainingSample.outcome_known, TrainingSample.exit_time
)
"""The trainer's query: closed trades of a market in an exit-time window."""

__all__ = ["OUTCOME_INDEX", "Base", "FeatureSchema", "TrainerSlotLease"]

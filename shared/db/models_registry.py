"""Tables owned by the registry: shadow challengers, archive marks, promotion decisions, live scores."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.models import Base, Json
from shared.db.types import BigId, UTCDateTime


class SlotChallenger(Base):
    """A version currently running in shadow next to its slot's champion (a movable alias)."""

    __tablename__ = "slot_challengers"

    slot_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.version_id"), primary_key=True)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(128))


class ChallengerHistory(Base):
    """Append-only record of shadow-set changes; ``revision`` grows by one per change of a slot."""

    __tablename__ = "challenger_history"
    __table_args__ = (UniqueConstraint("slot_key", "revision", name="uq_challenger_history_slot_revision"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    slot_key: Mapped[str] = mapped_column(String(128))
    revision: Mapped[int] = mapped_column(Integer)
    version_id: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ArchivedVersion(Base):
    """A version that may never serve again (its artifact is kept for audit)."""

    __tablename__ = "archived_versions"

    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.version_id"), primary_key=True)
    archived_at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")


class PromotionDecision(Base):
    """Every judgement of the promotion policy, promoted or not, with the numbers it used."""

    __tablename__ = "promotion_decisions"
    __table_args__ = (Index("ix_promotion_decisions_slot_time", "slot_key", "decided_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    slot_key: Mapped[str] = mapped_column(String(128))
    policy: Mapped[str] = mapped_column(String(32))
    challenger_version_id: Mapped[str] = mapped_column(String(64))
    champion_version_id: Mapped[str | None] = mapped_column(String(64))
    promoted: Mapped[bool] = mapped_column(Boolean)
    stage: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    numbers: Mapped[dict[str, Any]] = mapped_column(Json)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LiveScore(Base):
    """One version scored on one trade outcome: the champion's real result or a challenger's would-be result."""

    __tablename__ = "live_scores"
    __table_args__ = (
        UniqueConstraint("outcome_prediction_id", "version_id", name="uq_live_scores_outcome_version"),
        Index("ix_live_scores_version_time", "version_id", "scored_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    outcome_prediction_id: Mapped[str] = mapped_column(String(36))
    version_id: Mapped[str] = mapped_column(String(64))
    slot_key: Mapped[str] = mapped_column(String(128))
    shadow: Mapped[bool] = mapped_column(Boolean)
    action: Mapped[str] = mapped_column(String(8))
    trade_return: Mapped[float] = mapped_column(Float)
    pnl: Mapped[float] = mapped_column(Float)
    correct: Mapped[bool | None] = mapped_column(Boolean)
    scored_at: Mapped[datetime] = mapped_column(UTCDateTime())

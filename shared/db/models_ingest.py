"""Tables owned by the ingest service (declared on the shared metadata; migration 0002_ingest)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql import func

from shared.db.models import Base, Json
from shared.db.types import BigId, UTCDateTime

__all__ = ["AccountFill", "Base", "CandleGap", "FetchLedger", "TradeEvent"]


class FetchLedger(Base):
    """Open times ``[start_time, end_time)`` of (market, timeframe) fetched completely; ranges never overlap.

    "Complete" means every closed candle the exchange has in the range is stored (and published);
    a rerun fetches only what no range covers, so a restart resumes where the ledger ends.
    """

    __tablename__ = "ingest_fetch_ledger"
    __table_args__ = (
        UniqueConstraint("market", "timeframe", "start_time", name="uq_ingest_fetch_ledger_key"),
        Index("ix_ingest_fetch_ledger_series_end", "market", "timeframe", "end_time"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    market: Mapped[str] = mapped_column(String(32))
    timeframe: Mapped[str] = mapped_column(String(8))
    start_time: Mapped[datetime] = mapped_column(UTCDateTime())
    end_time: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.current_timestamp())


class CandleGap(Base):
    """Intervals without a candle (no trades) between two stored candles: recorded, never filled in."""

    __tablename__ = "candle_gaps"
    __table_args__ = (UniqueConstraint("market", "timeframe", "start_time", name="uq_candle_gaps_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    market: Mapped[str] = mapped_column(String(32))
    timeframe: Mapped[str] = mapped_column(String(8))
    start_time: Mapped[datetime] = mapped_column(UTCDateTime())
    """Open time of the first missing candle."""
    end_time: Mapped[datetime] = mapped_column(UTCDateTime())
    """Open time of the next stored candle (exclusive end of the gap)."""
    missing: Mapped[int] = mapped_column(Integer)
    """Intervals without a candle."""
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.current_timestamp())


class TradeEvent(Base):
    """A TradeExecuted / TradeClosed as received, until it is joined into a training sample.

    ``state``: pending (waiting for its prediction or its other half), recorded (sample written,
    TradeOutcomeRecorded not yet confirmed published), done, duplicate, dead (dead-lettered with
    ``reason``).
    """

    __tablename__ = "trade_events"
    __table_args__ = (
        Index("ix_trade_events_prediction", "prediction_id", "kind"),
        Index("ix_trade_events_state", "state", "received_at"),
    )

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    prediction_id: Mapped[str] = mapped_column(String(36))
    kind: Mapped[str] = mapped_column(String(8))
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AccountFill(Base):
    """A fill of the user's own account, imported from the exchange's trades endpoint (API keys)."""

    __tablename__ = "account_fills"
    __table_args__ = (Index("ix_account_fills_market_time", "market", "executed_at"),)

    fill_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(64))
    market: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(8))
    amount: Mapped[float] = mapped_column(Float)
    price: Mapped[float] = mapped_column(Float)
    fee: Mapped[float] = mapped_column(Float)
    fee_currency: Mapped[str] = mapped_column(String(16))
    taker: Mapped[bool] = mapped_column(Boolean)
    executed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.current_timestamp())

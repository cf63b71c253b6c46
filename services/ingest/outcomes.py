"""Trade outcomes: join TradeExecuted + TradeClosed to their prediction into one training sample.

Every event is first kept as a ``trade_events`` row (the order of arrival does not matter):

* execution + known prediction → the sample gets the execution (``outcome_known`` false; an open
  position may stay open for days);
* execution + close + known prediction → realised P&L after fees, ``target_label`` (return as a
  fraction, seed 003: 0.0111 = 1.11 %) and ``target_class`` (WIN / LOSS / NEUTRAL within
  ``neutral_band``) are written with ``outcome_known`` in ONE transaction, then
  TradeOutcomeRecorded is published once (key ``outcome:{prediction_id}``; rows stay ``recorded``
  until it is, and the sweep retries);
* a close before its execution, or an event before its prediction, waits (``pending``) and is
  completed by whichever event or sweep comes next; after ``outcome_wait_seconds`` it is
  dead-lettered with the reason;
* the same event again, or the same close with another event id, is a duplicate (ignored); a
  second, different close or execution for a prediction is refused (:class:`TradeEventRejected`,
  dead-lettered), and so is an execution whose market differs from its prediction's.
"""

from __future__ import annotations

import logging
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest.metrics import IngestMetrics
from services.ingest.repository import dialect_name
from shared.broker import dead_letter
from shared.db.models import ModelVersion, Prediction, TrainingSample
from shared.db.models_ingest import TradeEvent
from shared.db.session import dialect_insert
from shared.errors import PermanentError
from shared.messages import Action, Slot, TradeClosed, TradeExecuted, TradeOutcomeRecorded, utc_now
from shared.publishing import EventPublisher
from shared.streams import Stream

log = logging.getLogger(__name__)

TradeEventMessage = TradeExecuted | TradeClosed
TargetClass = Literal["WIN", "LOSS", "NEUTRAL"]
ACTIVE = ("pending", "open", "recorded", "done")
"""States of rows that count (not duplicates, not dead letters)."""


class TradeEventRejected(PermanentError):
    """A trade event contradicts what is stored for its prediction: dead-lettered, nothing written."""


class OutcomeStatus(StrEnum):
    """What recording a trade event did."""

    RECORDED = "recorded"
    """The outcome is now a complete training sample."""
    OPEN = "open"
    """The execution is joined to its prediction; the close has not arrived."""
    PENDING = "pending"
    """Waiting for the prediction, or (a close) for its execution."""
    DUPLICATE = "duplicate"
    """Already seen; nothing changed."""


@dataclass(frozen=True)
class Outcome:
    """A closed trade's result."""

    realized_pnl: float
    target_label: float
    target_class: TargetClass


def compute_outcome(
    *,
    side: str,
    entry_price: float,
    exit_price: float,
    quantity: float,
    entry_fee: float,
    exit_fee: float,
    neutral_band: float,
) -> Outcome:
    """Realised P&L after fees, return on the entry notional, and its class.

    >>> compute_outcome(side="BUY", entry_price=45000, exit_price=45500, quantity=0.1,
    ...                 entry_fee=0, exit_fee=0, neutral_band=0.001)
    Outcome(realized_pnl=50.0, target_label=0.011111111111111112, target_class='WIN')
    """
    move = exit_price - entry_price if side == "BUY" else entry_price - exit_price
    pnl = move * quantity - entry_fee - exit_fee
    label = pnl / (entry_price * quantity)
    target: TargetClass = "WIN" if label > neutral_band else "LOSS" if label < -neutral_band else "NEUTRAL"
    return Outcome(pnl, label, target)


@dataclass(frozen=True)
class OutcomeDeps:
    """What recording outcomes needs."""

    sessions: async_sessionmaker[AsyncSession]
    publisher: EventPublisher
    metrics: IngestMetrics
    neutral_band: float
    wait_seconds: float


@dataclass(frozen=True)
class OutcomeResult:
    """The status of a prediction's trade after an event."""

    status: OutcomeStatus
    prediction_id: str
    outcome: Outcome | None = None


def _kind(event: TradeEventMessage) -> str:
    return "executed" if isinstance(event, TradeExecuted) else "closed"


def _content(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in {"event_id", "occurred_at", "schema_version"}}


async def _lock_prediction(session: AsyncSession, prediction_id: str) -> None:
    if dialect_name(session) == "postgresql":
        key = zlib.crc32(f"tradeloop-outcome:{prediction_id}".encode()) | (1 << 41)
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


async def record_trade_event(event: TradeEventMessage, deps: OutcomeDeps) -> OutcomeResult:
    """Keep ``event`` and join what can be joined, in one transaction; publish a completed outcome."""
    prediction_id = str(event.prediction_id)
    kind = _kind(event)
    payload = event.model_dump(mode="json")
    now = utc_now()
    async with deps.sessions() as session, session.begin():
        await _lock_prediction(session, prediction_id)
        if await session.get(TradeEvent, str(event.event_id)) is not None:
            return OutcomeResult(OutcomeStatus.DUPLICATE, prediction_id)
        same = (
            await session.execute(
                select(TradeEvent).where(
                    TradeEvent.prediction_id == prediction_id, TradeEvent.kind == kind, TradeEvent.state.in_(ACTIVE)
                )
            )
        ).scalars().first()
        if same is not None and _content(same.payload) != _content(payload):
            raise TradeEventRejected(
                f"a different Trade{kind.capitalize()} for prediction {prediction_id} was already received "
                f"(event {same.event_id}); refusing event {event.event_id}"
            )
        state = "duplicate" if same is not None else "pending"
        session.add(
            TradeEvent(event_id=str(event.event_id), prediction_id=prediction_id, kind=kind, payload=payload,
                       state=state, received_at=now, updated_at=now)
        )
        if same is not None:
            return OutcomeResult(OutcomeStatus.DUPLICATE, prediction_id)
        await session.flush()
        result = await _join(session, prediction_id, deps.neutral_band)
    if result.status is OutcomeStatus.RECORDED:
        deps.metrics.outcomes_recorded.inc()
        await publish_recorded(deps, prediction_id)
    return result


async def _events(session: AsyncSession, prediction_id: str) -> dict[str, TradeEvent]:
    rows = (
        await session.execute(
            select(TradeEvent).where(TradeEvent.prediction_id == prediction_id, TradeEvent.state.in_(ACTIVE))
        )
    ).scalars()
    return {row.kind: row for row in rows}


async def _join(session: AsyncSession, prediction_id: str, neutral_band: float) -> OutcomeResult:
    """Write what the stored events and prediction allow (caller holds the prediction's lock)."""
    events = await _events(session, prediction_id)
    executed_row, closed_row = events.get("executed"), events.get("closed")
    if closed_row is not None and closed_row.state in ("recorded", "done"):
        return OutcomeResult(OutcomeStatus.DUPLICATE, prediction_id)
    prediction = await session.get(Prediction, prediction_id)
    if prediction is None or executed_row is None:
        return OutcomeResult(OutcomeStatus.PENDING, prediction_id)
    executed = TradeExecuted.model_validate(executed_row.payload)
    if executed.market != prediction.market:
        raise TradeEventRejected(
            f"TradeExecuted {executed.event_id} is for {executed.market} but prediction {prediction_id} "
            f"is for {prediction.market}"
        )
    values = await _sample_values(session, prediction, executed)
    now = utc_now()
    if closed_row is None:
        await _upsert_sample(session, values)
        executed_row.state, executed_row.updated_at = "open", now
        return OutcomeResult(OutcomeStatus.OPEN, prediction_id)
    closed = TradeClosed.model_validate(closed_row.payload)
    if closed.closed_at < executed.executed_at:
        raise TradeEventRejected(
            f"TradeClosed {closed.event_id} closes prediction {prediction_id} at {closed.closed_at}, "
            f"before its execution at {executed.executed_at}"
        )
    outcome = compute_outcome(
        side=executed.side, entry_price=executed.entry_price, exit_price=closed.exit_price,
        quantity=executed.quantity, entry_fee=executed.fee, exit_fee=closed.fee, neutral_band=neutral_band,
    )
    values |= {
        "exit_price": closed.exit_price, "exit_time": closed.closed_at, "exit_fee": closed.fee,
        "realized_pnl": outcome.realized_pnl, "target_label": outcome.target_label,
        "target_class": outcome.target_class, "outcome_known": True,
    }
    await _upsert_sample(session, values)
    for row in (executed_row, closed_row):
        row.state, row.updated_at = "recorded", now
    return OutcomeResult(OutcomeStatus.RECORDED, prediction_id, outcome)


async def _sample_values(session: AsyncSession, prediction: Prediction, executed: TradeExecuted) -> dict[str, Any]:
    schema_hash = (
        await session.execute(
            select(ModelVersion.feature_schema_hash).where(ModelVersion.version_id == prediction.version_id)
        )
    ).scalar_one_or_none()
    return {
        "prediction_id": prediction.prediction_id, "symbol": prediction.market, "timeframe": prediction.timeframe,
        "timestamp": prediction.candle_open_time, "model_version_id": prediction.version_id,
        "predicted_action": prediction.action, "prediction_confidence": prediction.confidence,
        "features": prediction.features, "feature_count": len(prediction.features),
        "feature_schema_hash": schema_hash, "executed": True, "execution_side": executed.side,
        "quantity": executed.quantity, "entry_price": executed.entry_price, "entry_time": executed.executed_at,
        "entry_fee": executed.fee,
    }


async def _upsert_sample(session: AsyncSession, values: dict[str, Any]) -> None:
    statement = dialect_insert(session, TrainingSample).values(values)
    changes = {name: statement.excluded[name] for name in values if name != "prediction_id"}
    await session.execute(statement.on_conflict_do_update(index_elements=["prediction_id"], set_=changes))


async def publish_recorded(deps: OutcomeDeps, prediction_id: str) -> bool:
    """Publish TradeOutcomeRecorded once for a recorded sample, then mark its events done."""
    async with deps.sessions() as session:
        row = (
            await session.execute(
                select(TrainingSample, Prediction.slot_key)
                .join(Prediction, Prediction.prediction_id == TrainingSample.prediction_id)
                .where(TrainingSample.prediction_id == prediction_id, TrainingSample.outcome_known.is_(True))
            )
        ).first()
    if row is None:
        return False
    sample, slot_key = row
    try:
        slot: Slot | None = Slot.from_key(slot_key)
    except ValueError:
        slot = None
    message = TradeOutcomeRecorded(
        prediction_id=uuid.UUID(prediction_id), version_id=sample.model_version_id, slot=slot,
        market=sample.symbol, predicted_action=Action(sample.predicted_action),
        side="BUY" if sample.execution_side == "BUY" else "SELL", realized_pnl=float(sample.realized_pnl or 0.0),
        target_label=float(sample.target_label or 0.0),
        target_class="WIN" if sample.target_class == "WIN" else "LOSS" if sample.target_class == "LOSS" else "NEUTRAL",
        candle_open_time=sample.timestamp,
    )
    await deps.publisher.publish_once([(f"outcome:{prediction_id}", message)])
    async with deps.sessions() as session, session.begin():
        await session.execute(
            update(TradeEvent)
            .where(TradeEvent.prediction_id == prediction_id, TradeEvent.state == "recorded")
            .values(state="done", updated_at=utc_now())
        )
    return True


async def sweep(deps: OutcomeDeps, now: datetime | None = None, limit: int = 500) -> dict[str, int]:
    """Retry waiting events, publish unpublished outcomes, dead-letter events waiting too long."""
    now = now or utc_now()
    async with deps.sessions() as session:
        rows = (
            await session.execute(
                select(TradeEvent.prediction_id, func.min(TradeEvent.received_at))
                .where(TradeEvent.state.in_(("pending", "recorded")))
                .group_by(TradeEvent.prediction_id)
                .order_by(func.min(TradeEvent.received_at))
                .limit(limit)
            )
        ).all()
    counts = {"recorded": 0, "published": 0, "dead": 0}
    for prediction_id, _ in rows:
        status = await _sweep_one(deps, prediction_id, now)
        if status in counts:
            counts[status] += 1
    async with deps.sessions() as session:
        waiting = (await session.execute(select(func.count()).where(TradeEvent.state == "pending"))).scalar_one()
    deps.metrics.outcomes_pending.set(waiting)
    return counts


async def _sweep_one(deps: OutcomeDeps, prediction_id: str, now: datetime) -> str:
    status = OutcomeStatus.PENDING
    expired: list[TradeEvent] = []
    reason = ""
    try:
        async with deps.sessions() as session, session.begin():
            await _lock_prediction(session, prediction_id)
            status = (await _join(session, prediction_id, deps.neutral_band)).status
            if status is OutcomeStatus.PENDING:
                expired, reason = await _expire(session, prediction_id, now, deps.wait_seconds)
    except TradeEventRejected as error:
        expired, reason = await _reject_all(deps, prediction_id, str(error))
    for row in expired:
        await _dead_letter(deps, row, reason)
    if expired:
        return "dead"
    if status is OutcomeStatus.RECORDED:
        deps.metrics.outcomes_recorded.inc()
    published = await publish_recorded(deps, prediction_id)
    return "recorded" if status is OutcomeStatus.RECORDED else "published" if published else "pending"


async def _expire(
    session: AsyncSession, prediction_id: str, now: datetime, wait_seconds: float
) -> tuple[list[TradeEvent], str]:
    events = await _events(session, prediction_id)
    pending = [row for row in events.values() if row.state == "pending"]
    if not pending or (now - min(row.received_at for row in pending)).total_seconds() < wait_seconds:
        return [], ""
    if await session.get(Prediction, prediction_id) is None:
        reason = f"unknown prediction id {prediction_id} after waiting {wait_seconds:g} s"
    else:
        reason = f"TradeClosed without a TradeExecuted for prediction {prediction_id} after {wait_seconds:g} s"
    for row in pending:
        row.state, row.reason, row.updated_at = "dead", reason, now
    return pending, reason


async def _reject_all(deps: OutcomeDeps, prediction_id: str, reason: str) -> tuple[list[TradeEvent], str]:
    async with deps.sessions() as session, session.begin():
        rows = [row for row in (await _events(session, prediction_id)).values() if row.state == "pending"]
        for row in rows:
            row.state, row.reason, row.updated_at = "dead", reason, utc_now()
    return rows, reason


async def _dead_letter(deps: OutcomeDeps, row: TradeEvent, reason: str) -> None:
    stream = Stream.TRADE_EXECUTED if row.kind == "executed" else Stream.TRADE_CLOSED
    model = TradeExecuted if row.kind == "executed" else TradeClosed
    payload = model.model_validate(row.payload).model_dump_json().encode()
    await dead_letter(
        deps.publisher.redis, stream=stream.value, entry_id=row.event_id, group="ingest",
        payload=payload, error=reason, deliveries=0,
    )
    deps.metrics.dead_letters.labels(stream.dlq).inc()
    log.error("dead-lettered %s %s: %s", stream.value, row.event_id, reason)

"""Predicting closed candles: every champion first (published at once), then the challengers in shadow, then
the rows of both in one transaction.

Candles arrive in batches; consecutive candles of one (market, timeframe) share one feature computation
and one predict call per model. Shadow work starts only after the champion's predictions were published
(it cannot change them) and runs in small event-loop steps between candles (it delays none by more than
one step).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from services.inference.model_slot import ModelSlot, ServedModel
from services.inference.state import InferenceState
from services.inference.windows import Segment
from shared.db.models import Prediction
from shared.db.session import dialect_insert
from shared.direct_redis import DirectConnection
from shared.messages import CandleClosed, PredictionMade, utc_now
from shared.ml.predictor import Decision
from shared.tasks import yield_to_io

log = logging.getLogger(__name__)

PREDICTION_NAMESPACE = uuid.UUID("5b0f3c56-1d7e-4c55-9a51-6a0e0f1c7a10")
PREDICTION_KEY = ["version_id", "market", "timeframe", "candle_open_time"]


def prediction_id(version_id: str, candle: CandleClosed) -> uuid.UUID:
    """Deterministic id: the same version predicting the same candle gives the same id."""
    return uuid.uuid5(PREDICTION_NAMESPACE, f"{version_id}:{candle.market}:{candle.timeframe}:{candle.open_time}")


def is_stale(model: ServedModel, now: datetime, max_age_hours: float | None) -> bool:
    """True when expiry is on and ``model`` became champion more than ``max_age_hours`` ago."""
    if max_age_hours is None or model.activated_at is None:
        return False
    return now - model.activated_at > timedelta(hours=max_age_hours)


@dataclass
class SlotPredictions:
    """A slot's candles of one segment and their features: what shadow work needs after the champion."""

    model_slot: ModelSlot
    candles: list[CandleClosed]
    features: np.ndarray


@dataclass
class PendingWork:
    """A batch after the champions' predictions were published: shadow work and rows still to do."""

    slot_batches: list[SlotPredictions] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    champion_predictions: int = 0


def _prediction(model_slot: ModelSlot, model: ServedModel, candle: CandleClosed, decision: Decision, *,
                shadow: bool, stale: bool) -> PredictionMade:
    return PredictionMade(
        prediction_id=prediction_id(model.version_id, candle), slot=model_slot.slot, version_id=model.version_id,
        market=candle.market, timeframe=candle.timeframe, candle_open_time=candle.open_time, action=decision.action,
        confidence=decision.confidence, predicted_return=decision.score, shadow=shadow, stale=stale,
        candle_event_id=candle.event_id,
    )


def _row(event: PredictionMade, features: np.ndarray) -> dict[str, Any]:
    return {
        "prediction_id": str(event.prediction_id), "slot_key": event.slot.key, "version_id": event.version_id,
        "market": event.market, "timeframe": event.timeframe, "candle_open_time": event.candle_open_time,
        "action": event.action.value, "confidence": event.confidence, "predicted_return": event.predicted_return,
        "shadow": event.shadow, "features": features, "created_at": event.occurred_at,
    }


async def predict_champions(candles: Sequence[CandleClosed], state: InferenceState, *,
                            via: DirectConnection | None = None) -> PendingWork:
    """Predict ``candles`` with every matching champion and publish (on ``via``, a connection of the
    caller's own, when given); return what is left to do."""
    work = PendingWork()
    keys = {(s.slot.market, s.slot.timeframe) for s in state.slots.values() if s.current is not None}
    served = [c for c in candles if (c.market, c.timeframe) in keys]
    if len(served) < len(candles):
        state.metrics.skipped.labels("no_champion").inc(len(candles) - len(served))
    if not served:
        return work
    segments, short = await state.windows.segments(served)
    if short:
        state.metrics.skipped.labels("insufficient_history").inc(len(short))
    for segment in segments:
        await _predict_segment(segment, state, work, via)
    return work


async def _predict_segment(segment: Segment, state: InferenceState, work: PendingWork,
                           via: DirectConnection | None) -> None:
    started = time.perf_counter()
    features = segment.features()
    now = utc_now()
    events: list[tuple[str, PredictionMade]] = []
    slots = state.champions_for(*segment.key)
    for model_slot in slots:
        champion = model_slot.current  # in-flight predictions finish on the model they started with
        if champion is None:
            continue
        stale = is_stale(champion, now, state.settings.champion_max_age_hours)
        decisions = champion.predictor.predict(features)
        for candle, decision, row in zip(segment.candles, decisions, features, strict=True):
            event = _prediction(model_slot, champion, candle, decision, shadow=False, stale=stale)
            events.append((f"prediction:{event.prediction_id}", event))
            work.rows.append(_row(event, row))
        work.slot_batches.append(SlotPredictions(model_slot, segment.candles, features))
        if stale:
            state.metrics.stale_predictions.labels(model_slot.slot.key, champion.version_id).inc(len(decisions))
    per_candle = (time.perf_counter() - started) / max(len(events), 1)
    await state.publisher.publish_once(events, via=via)
    published = utc_now()
    metrics = state.metrics
    for candle in segment.candles:
        metrics.candle_to_prediction.observe((published - candle.occurred_at).total_seconds())
    counts: dict[tuple[str, str, str], int] = {}
    for _key, event in events:
        metrics.predict_seconds.observe(per_candle)
        label = (event.slot.key, event.version_id, event.action.value)
        counts[label] = counts.get(label, 0) + 1
    for label, count in counts.items():
        metrics.predictions.labels(*label).inc(count)
    work.champion_predictions += len(events)


SHADOW_STEP_ROWS = 32
"""Rows one challenger predicts per event-loop step of shadow work (a step stays well under a millisecond)."""


async def predict_shadows(batches: Sequence[SlotPredictions], state: InferenceState) -> list[dict[str, Any]]:
    """Run each slot's challengers on the features its champion used; publish them as shadow; return the rows.

    Call only after the champions' predictions were published. The work runs on the event loop in steps of
    one challenger and up to :data:`SHADOW_STEP_ROWS` rows (predict, events, rows), each followed by a
    yield, so a candle that arrived meanwhile is predicted between two steps. (In a worker thread the same
    work held the GIL through numpy's many small calls and stretched every candle step it overlapped.)
    A challenger that fails is logged and costs only its own shadow predictions.
    """
    per_slot: dict[int, tuple[ModelSlot, list[CandleClosed], list[np.ndarray]]] = {}
    for batch in batches:
        _slot, candles, features = per_slot.setdefault(id(batch.model_slot), (batch.model_slot, [], []))
        candles.extend(batch.candles)
        features.append(batch.features)
    plan = [(model_slot, model, candles, np.concatenate(features))
            for model_slot, candles, features in per_slot.values() for model in model_slot.shadows()]
    if not plan:
        return []
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    events: list[tuple[str, PredictionMade]] = []
    for model_slot, model, candles, matrix in plan:
        model_rows: list[dict[str, Any]] = []
        model_events: list[tuple[str, PredictionMade]] = []
        try:
            for first in range(0, len(candles), SHADOW_STEP_ROWS):
                step = matrix[first : first + SHADOW_STEP_ROWS]
                decisions = model.predictor.predict(step)
                for candle, decision, row in zip(candles[first : first + SHADOW_STEP_ROWS], decisions, step,
                                                 strict=True):
                    event = _prediction(model_slot, model, candle, decision, shadow=True, stale=False)
                    model_events.append((f"prediction:{event.prediction_id}", event))
                    model_rows.append(_row(event, row))
                await yield_to_io()
        except Exception:
            log.exception("shadow predictions of %s failed; champions and other challengers unaffected",
                          model.version_id)
            continue
        rows += model_rows
        events += model_events
        state.metrics.shadow_predictions.labels(model_slot.slot.key, model.version_id).inc(len(model_events))
    try:
        await state.publisher.publish_once(events)
    except Exception:
        log.exception("publishing shadow predictions failed; champions unaffected")
        return []
    state.metrics.shadow_seconds.observe(time.perf_counter() - started)
    return rows


async def store_rows(rows: Sequence[dict[str, Any]], state: InferenceState) -> None:
    """Insert prediction rows in one transaction (an existing (version, candle) row is kept)."""
    if not rows:
        return
    async with state.sessions() as session, session.begin():
        statement = dialect_insert(session, Prediction.__table__).on_conflict_do_nothing(index_elements=PREDICTION_KEY)
        await session.execute(statement, list(rows))


RowWriter = Callable[[Sequence[dict[str, Any]]], Awaitable[None]]


async def finish(works: Sequence[PendingWork], state: InferenceState, write_rows: RowWriter | None = None) -> None:
    """Shadow predictions, then every row (champions and shadows) in one transaction."""
    shadow_rows = await predict_shadows([b for work in works for b in work.slot_batches], state)
    await yield_to_io()  # a candle read meanwhile goes before the rows are encoded
    rows = [row for work in works for row in work.rows] + shadow_rows
    if write_rows is None:
        await store_rows(rows, state)
    else:
        await write_rows(rows)

"""Predict on closed candles with each slot's champion; apply activations (hot swap) and reconcile."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.inference.model_slot import ModelSlot
from services.inference.settings import InferenceSettings
from services.inference.windows import CandleWindows
from shared.artifacts import ArtifactStore
from shared.db.models import ModelVersion, Prediction, SlotChampion
from shared.db.session import dialect_insert
from shared.messages import (
    ArtifactRef,
    CandleClosed,
    ModelActivated,
    ModelActivationFailed,
    ModelSwapped,
    PredictionMade,
    Slot,
    utc_now,
)
from shared.ml.features import latest_features
from shared.publishing import EventPublisher

log = logging.getLogger(__name__)

PREDICTION_NAMESPACE = uuid.UUID("5b0f3c56-1d7e-4c55-9a51-6a0e0f1c7a10")
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(frozen=True)
class InferenceMetrics:
    """Inference metrics."""

    predictions: Counter
    predict_seconds: Histogram
    candle_to_prediction: Histogram
    skipped: Counter
    swaps: Counter
    swap_failures: Counter
    swap_seconds: Histogram
    champion: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None) -> InferenceMetrics:
        return cls(
            predictions=Counter("tradeloop_predictions", "Predictions published.", ["slot", "version", "action"],
                                registry=registry),
            predict_seconds=Histogram("tradeloop_predict_seconds", "Features + model predict per candle and slot.",
                                      buckets=FAST_BUCKETS, registry=registry),
            candle_to_prediction=Histogram(
                "tradeloop_candle_to_prediction_seconds", "CandleClosed published → PredictionMade published.",
                buckets=FAST_BUCKETS, registry=registry),
            skipped=Counter("tradeloop_candles_without_prediction", "Candles not predicted, by reason.", ["reason"],
                            registry=registry),
            swaps=Counter("tradeloop_model_swaps", "Hot swaps done.", ["slot"], registry=registry),
            swap_failures=Counter("tradeloop_model_swap_failures", "Activations that failed to load.", ["slot"],
                                  registry=registry),
            swap_seconds=Histogram("tradeloop_model_swap_seconds", "Load + verify + warm-up duration.",
                                   buckets=FAST_BUCKETS, registry=registry),
            champion=Gauge("tradeloop_served_champion", "1 for the version served per slot.", ["slot", "version"],
                           registry=registry),
        )


@dataclass
class InferenceState:
    """Everything one inference replica serves."""

    settings: InferenceSettings
    sessions: async_sessionmaker[AsyncSession]
    store: ArtifactStore
    publisher: EventPublisher
    metrics: InferenceMetrics
    windows: CandleWindows
    slots: dict[str, ModelSlot] = field(default_factory=dict)

    @property
    def replica(self) -> str:
        return self.settings.consumer_name

    def serves_market(self, market: str) -> bool:
        return not self.settings.markets or market in self.settings.markets

    def slot_for(self, slot: Slot) -> ModelSlot:
        if slot.key not in self.slots:
            self.slots[slot.key] = ModelSlot(slot, self.store)
        return self.slots[slot.key]


def prediction_id(version_id: str, candle: CandleClosed) -> uuid.UUID:
    """Deterministic id: the same version predicting the same candle gives the same id."""
    return uuid.uuid5(PREDICTION_NAMESPACE, f"{version_id}:{candle.market}:{candle.timeframe}:{candle.open_time}")


async def handle_candle(candle: CandleClosed, state: InferenceState) -> int:
    """Predict ``candle`` with every matching champion; publish and store; return how many predictions."""
    matching = [s for s in state.slots.values()
                if s.current and s.slot.market == candle.market and s.slot.timeframe == candle.timeframe]
    if not matching:
        state.metrics.skipped.labels("no_champion").inc()
        return 0
    window = await state.windows.window_for(candle)
    if window is None:
        state.metrics.skipped.labels("insufficient_history").inc()
        return 0
    started = time.perf_counter()
    features = latest_features(window)
    events: list[tuple[str, PredictionMade]] = []
    rows = []
    for model_slot in matching:
        served = model_slot.current  # in-flight predictions finish on the model they started with
        assert served is not None
        decision = served.predictor.predict(features.reshape(1, -1))[0]
        event = PredictionMade(
            prediction_id=prediction_id(served.version_id, candle), slot=model_slot.slot,
            version_id=served.version_id, market=candle.market, timeframe=candle.timeframe,
            candle_open_time=candle.open_time, action=decision.action, confidence=decision.confidence,
            predicted_return=decision.score, candle_event_id=candle.event_id,
        )
        events.append((f"prediction:{event.prediction_id}", event))
        rows.append({
            "prediction_id": str(event.prediction_id), "slot_key": model_slot.slot.key,
            "version_id": served.version_id, "market": candle.market, "timeframe": candle.timeframe,
            "candle_open_time": candle.open_time, "action": decision.action.value,
            "confidence": decision.confidence, "predicted_return": decision.score, "shadow": False,
            "features": features, "created_at": event.occurred_at,
        })
    state.metrics.predict_seconds.observe(time.perf_counter() - started)
    await state.publisher.publish_once(events)
    state.metrics.candle_to_prediction.observe((utc_now() - candle.occurred_at).total_seconds())
    for _key, event in events:
        state.metrics.predictions.labels(event.slot.key, event.version_id, event.action.value).inc()
    async with state.sessions() as session, session.begin():
        await session.execute(
            dialect_insert(session, Prediction).values(rows).on_conflict_do_nothing(
                index_elements=["version_id", "market", "timeframe", "candle_open_time"])
        )
    return len(events)


async def apply_activation(
    state: InferenceState, *, slot: Slot, version_id: str, epoch: int, ref: ArtifactRef, schema_hash: str,
    activated_at: float | None = None,
) -> None:
    """Swap to ``version_id`` unless stale; on failure keep the old model and publish the failure."""
    if not state.serves_market(slot.market):
        return
    model_slot = state.slot_for(slot)
    previous = model_slot.current
    try:
        result = await model_slot.swap(version_id=version_id, epoch=epoch, ref=ref, schema_hash=schema_hash)
    except Exception as error:
        state.metrics.swap_failures.labels(slot.key).inc()
        log.error("activation of %s failed, keeping %s: %r", version_id,
                  previous.version_id if previous else None, error)
        await state.publisher.publish(ModelActivationFailed(
            replica=state.replica, slot=slot, version_id=version_id, epoch=epoch,
            kept_version_id=previous.version_id if previous else None, error=repr(error)[:2000]))
        return
    if not result.swapped:
        log.info("ignored activation of %s: %s", version_id, result.reason)
        return
    state.metrics.swaps.labels(slot.key).inc()
    state.metrics.swap_seconds.observe(result.load_seconds)
    if previous is not None:
        state.metrics.champion.labels(slot.key, previous.version_id).set(0)
    state.metrics.champion.labels(slot.key, version_id).set(1)
    since = (time.time() - activated_at) if activated_at else result.load_seconds
    log.info("serving %s for %s (epoch %d, load %.1f ms)", version_id, slot.key, epoch, result.load_seconds * 1000)
    await state.publisher.publish(ModelSwapped(
        replica=state.replica, slot=slot, version_id=version_id, epoch=epoch,
        load_seconds=result.load_seconds, activation_to_swap_seconds=since))


async def handle_activated(event: ModelActivated, state: InferenceState) -> None:
    """Apply an activation; an epoch gap (a missed event) triggers a reconcile with the database."""
    model_slot = state.slots.get(event.slot.key)
    if model_slot is not None and event.epoch > model_slot.epoch + 1 and model_slot.current is not None:
        log.warning("epoch gap on %s (%d → %d): reconciling", event.slot.key, model_slot.epoch, event.epoch)
        await reconcile(state)
        return
    await apply_activation(state, slot=event.slot, version_id=event.version_id, epoch=event.epoch,
                           ref=event.artifact, schema_hash=event.feature_schema_hash,
                           activated_at=event.occurred_at.timestamp())


async def reconcile(state: InferenceState) -> None:
    """Load every champion the database has at a newer epoch than served (start-up and safety net)."""
    async with state.sessions() as session:
        rows = (await session.execute(
            select(SlotChampion, ModelVersion).join(ModelVersion, ModelVersion.version_id == SlotChampion.version_id)
        )).all()
    for champion, version in rows:
        slot = Slot.from_key(champion.slot_key)
        current = state.slots.get(slot.key)
        if current is not None and current.epoch >= champion.epoch:
            continue
        await apply_activation(
            state, slot=slot, version_id=version.version_id, epoch=champion.epoch,
            ref=ArtifactRef(sha256=version.artifact_sha256, path=version.artifact_path, size=version.artifact_size),
            schema_hash=version.feature_schema_hash,
        )

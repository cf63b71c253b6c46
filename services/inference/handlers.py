"""Predict on closed candles with each slot's champion (and challengers in shadow); apply activations
(hot swap) and challenger sets; reconcile with the database and the challengers stream."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy import select

from services.inference.challengers import handle_challengers_changed, reconcile_challengers
from services.inference.predictions import PendingWork, finish, predict_champions, prediction_id
from services.inference.state import FAST_BUCKETS, InferenceMetrics, InferenceState
from shared.db.models import ModelVersion, SlotChampion
from shared.direct_redis import DirectConnection
from shared.messages import ArtifactRef, CandleClosed, ModelActivated, ModelActivationFailed, ModelSwapped, Slot

__all__ = [
    "FAST_BUCKETS",
    "InferenceMetrics",
    "InferenceState",
    "apply_activation",
    "handle_activated",
    "handle_candle",
    "handle_candle_batch",
    "handle_challengers_changed",
    "prediction_id",
    "reconcile",
]

log = logging.getLogger(__name__)


async def handle_candle(candle: CandleClosed, state: InferenceState) -> int:
    """Predict one candle completely (champions, shadows, rows); return how many champion predictions."""
    work = await predict_champions([candle], state)
    await finish([work], state)
    return work.champion_predictions


async def handle_candle_batch(
    candles: Sequence[CandleClosed], state: InferenceState, *, entry_ids: Sequence[bytes | str],
    ack: Callable[[], Awaitable[object]], via: DirectConnection | None = None,
) -> PendingWork:
    """Predict a batch with the champions and publish now (on ``via`` when given); shadows, rows and the
    ack follow in the writer.

    Without a writer everything is finished here and ``ack`` is awaited after the commit.
    """
    state.metrics.batch_candles.observe(len(entry_ids))
    work = await predict_champions(candles, state, via=via)
    if state.writer is None:
        await finish([work], state)
        await ack()
    else:
        await state.writer.submit(work, entry_ids)
    return work


async def apply_activation(
    state: InferenceState, *, slot: Slot, version_id: str, epoch: int, ref: ArtifactRef, schema_hash: str,
    activated_at: float | None = None, champion_since: datetime | None = None,
) -> None:
    """Swap to ``version_id`` unless stale; on failure keep the old model and publish the failure.

    ``activated_at`` (epoch seconds, from the event) measures activation → swap; ``champion_since`` is
    when the version became champion (expiry), by default ``activated_at``.
    """
    if not state.serves_market(slot.market):
        return
    model_slot = state.slot_for(slot)
    previous = model_slot.current
    since = champion_since or (datetime.fromtimestamp(activated_at, UTC) if activated_at else None)
    try:
        result = await model_slot.swap(version_id=version_id, epoch=epoch, ref=ref, schema_hash=schema_hash,
                                       activated_at=since)
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
    to_swap = (time.time() - activated_at) if activated_at else result.load_seconds
    log.info("serving %s for %s (epoch %d, load %.1f ms)", version_id, slot.key, epoch, result.load_seconds * 1000)
    await state.publisher.publish(ModelSwapped(
        replica=state.replica, slot=slot, version_id=version_id, epoch=epoch,
        load_seconds=result.load_seconds, activation_to_swap_seconds=to_swap))


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


async def reconcile(state: InferenceState, *, challengers: bool = False) -> None:
    """Load every champion the database has at a newer epoch than served (start-up and safety net);
    with ``challengers``, also the newest challenger set of each slot from the challengers stream."""
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
            schema_hash=version.feature_schema_hash, champion_since=champion.activated_at,
        )
    if challengers:
        await reconcile_challengers(state, state.publisher.redis)

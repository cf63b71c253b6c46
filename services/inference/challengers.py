"""Shadow challengers: apply ChallengersChanged (every replica), and find the newest set per slot on start.

Each ChallengersChanged carries a slot's whole set and a revision, so applying the newest one is enough:
a missed event is repaired by any later one, and at start by scanning the stream newest-first.
"""

from __future__ import annotations

import logging
from typing import Any

from services.inference.state import InferenceState
from shared.broker import Redis
from shared.messages import ChallengersChanged, ModelActivationFailed
from shared.streams import Stream
from shared.waiting import decode_entry

log = logging.getLogger(__name__)

SCAN_PAGE = 500


async def handle_challengers_changed(event: ChallengersChanged, state: InferenceState) -> None:
    """Serve the event's challenger set if its revision is newer; report each one that fails to load."""
    if not state.serves_market(event.slot.market):
        return
    model_slot = state.slot_for(event.slot)
    change = await model_slot.set_challengers(event.revision, event.challengers)
    if not change.applied:
        log.info("ignored challengers of %s: %s", event.slot.key, change.reason)
        return
    champion = model_slot.current
    for version_id, error in change.failed:
        state.metrics.challenger_failures.labels(event.slot.key).inc()
        log.error("challenger %s of %s not loaded (revision %d): %r", version_id, event.slot.key, event.revision,
                  error)
        await state.publisher.publish(ModelActivationFailed(
            replica=state.replica, slot=event.slot, version_id=version_id, epoch=event.revision,
            kept_version_id=champion.version_id if champion else None,
            error=f"challenger not loaded (revision {event.revision}): {error!r}"[:2000]))
    state.metrics.challengers.labels(event.slot.key).set(len(model_slot.challengers))
    log.info("challengers of %s now %s (revision %d, loaded %s, dropped %s, %.1f ms)", event.slot.key,
             list(model_slot.challengers), event.revision, list(change.loaded), list(change.removed),
             change.load_seconds * 1000)


async def newest_challenger_sets(redis: Redis) -> dict[str, ChallengersChanged]:
    """The newest ChallengersChanged per slot on the stream (highest revision), read newest-first."""
    newest: dict[str, ChallengersChanged] = {}
    upper = "+"
    while True:
        entries: Any = await redis.xrevrange(Stream.CHALLENGERS_CHANGED.value, max=upper, min="-", count=SCAN_PAGE)
        for _entry_id, fields in entries:
            try:
                event = decode_entry(Stream.CHALLENGERS_CHANGED, fields)
            except ValueError as error:  # pydantic's ValidationError included
                log.warning("skipped an unreadable challengers entry: %r", error)
                continue
            assert isinstance(event, ChallengersChanged)
            known = newest.get(event.slot.key)
            if known is None or event.revision > known.revision:
                newest[event.slot.key] = event
        if len(entries) < SCAN_PAGE:
            return newest
        last = entries[-1][0]
        upper = "(" + (last.decode() if isinstance(last, bytes) else str(last))


async def reconcile_challengers(state: InferenceState, redis: Redis) -> None:
    """Apply the newest challenger set of every slot found on the stream (start-up and safety net)."""
    for event in (await newest_challenger_sets(redis)).values():
        await handle_challengers_changed(event, state)

"""FastStream subscribers of inference: the candle reclaimer, model-activated and challengers-changed (every
replica); produces prediction-made, model-swapped and model-activation-failed.

New candles are read by :class:`services.inference.candle_reader.CandleReader` (the hot path, without the
subscriber layers) and acked by the prediction writer once their rows are committed. If a batch fails its
entries stay pending and the reclaimer here retries them one by one, with the dead-letter middleware
counting deliveries as for every work stream.
"""

from __future__ import annotations

import logging

from faststream import AckPolicy
from faststream.redis import RedisRouter, StreamSub

from services.inference.handlers import (
    InferenceState,
    handle_activated,
    handle_candle,
    handle_challengers_changed,
)
from shared.broker import fanout_subscriber
from shared.messages import CandleClosed, ChallengersChanged, ModelActivated
from shared.streams import Group, Stream

log = logging.getLogger(__name__)


def build_router(state: InferenceState) -> RedisRouter:
    """Subscribe the candle reclaimer and the broadcast handlers."""
    router = RedisRouter()
    settings = state.settings
    consumer = settings.consumer_name
    stream, group = Stream.CANDLE_CLOSED.value, Group.INFERENCE.value

    @router.subscriber(
        stream=StreamSub(stream, group=group, consumer=f"{consumer}-reclaim", min_idle_time=settings.reclaim_idle_ms,
                         polling_interval=settings.reclaim_poll_ms),
        ack_policy=AckPolicy.REJECT_ON_ERROR, title=f"{stream}:{group}",
        description="CandleClosed: read in batches by the service's own XREADGROUP loop (CandleReader); this "
                    "subscriber reclaims entries left pending (a failed batch, a dead replica) one by one.",
    )
    async def on_candle_reclaimed(candle: CandleClosed) -> None:
        await handle_candle(candle, state)

    @fanout_subscriber(router, Stream.MODEL_ACTIVATED, settings)  # type: ignore[untyped-decorator]
    async def on_model_activated(event: ModelActivated) -> None:
        await handle_activated(event, state)

    @fanout_subscriber(router, Stream.CHALLENGERS_CHANGED, settings)  # type: ignore[untyped-decorator]
    async def on_challengers_changed(event: ChallengersChanged) -> None:
        await handle_challengers_changed(event, state)

    return router

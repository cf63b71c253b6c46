"""Consumes candle-closed (group inference) and model-activated (every replica); produces prediction-made,
model-swapped and model-activation-failed."""

from __future__ import annotations

from faststream.redis import RedisRouter

from services.inference.handlers import InferenceState, handle_activated, handle_candle
from shared.broker import fanout_subscriber, work_subscriber
from shared.messages import CandleClosed, ModelActivated
from shared.streams import Group, Stream


def build_router(state: InferenceState) -> RedisRouter:
    """Subscribe the candle handler (group + reclaimer) and the activation handler (broadcast)."""
    router = RedisRouter()

    @work_subscriber(router, Stream.CANDLE_CLOSED, Group.INFERENCE, state.settings, max_records=100, polling_interval=50)
    async def on_candle_closed(candle: CandleClosed) -> None:
        await handle_candle(candle, state)

    @fanout_subscriber(router, Stream.MODEL_ACTIVATED, polling_interval=50)  # type: ignore[untyped-decorator]
    async def on_model_activated(event: ModelActivated) -> None:
        await handle_activated(event, state)

    return router

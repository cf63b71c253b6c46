"""Consumes candle-closed (group inference, in batches, plus a per-message reclaimer), model-activated and
challengers-changed (every replica); produces prediction-made, model-swapped and model-activation-failed.

Candles are read in batches (one XREADGROUP, up to ``candle_batch_size``) and acked by the prediction
writer once their rows are committed (AckPolicy.MANUAL). An entry that is not a valid CandleClosed is
dead-lettered at once; if a whole batch fails it stays pending and the reclaimer retries its entries one
by one, with the dead-letter middleware counting deliveries as for every work stream.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from faststream import AckPolicy, BaseMiddleware, StreamMessage
from faststream.redis import RedisRouter, StreamSub
from pydantic import ValidationError

from services.inference.handlers import (
    InferenceState,
    handle_activated,
    handle_candle,
    handle_candle_batch,
    handle_challengers_changed,
)
from shared.broker import dead_letter, fanout_subscriber
from shared.messages import CandleClosed, ChallengersChanged, ModelActivated
from shared.streams import Group, Stream

log = logging.getLogger(__name__)

_consumed: ContextVar[StreamMessage[Any]] = ContextVar("inference_consumed_message")


class ConsumedMessage(BaseMiddleware):
    """Expose the message being handled to the handler through a ContextVar.

    A ``msg: RedisBatchStreamMessage`` handler parameter would be resolved by fast-depends in a worker
    thread for every batch (a thread hop per batch on the hot path); a ContextVar costs nothing.
    """

    async def consume_scope(
        self, call_next: Callable[[StreamMessage[Any]], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        token = _consumed.set(msg)
        try:
            return await call_next(msg)
        finally:
            _consumed.reset(token)


async def _valid_candles(body: list[Any], msg: Any, state: InferenceState) -> list[CandleClosed]:
    """Validate each entry of a batch; dead-letter the invalid ones (acked with the batch)."""
    candles: list[CandleClosed] = []
    for index, item in enumerate(body):
        try:
            candles.append(CandleClosed.model_validate(item))
        except ValidationError as error:
            fields = msg.raw_message["data"][index]
            entry = msg.raw_message["message_ids"][index]
            await dead_letter(state.publisher.redis, stream=Stream.CANDLE_CLOSED.value,
                              entry_id=entry.decode() if isinstance(entry, bytes) else str(entry),
                              group=Group.INFERENCE.value, payload=fields.get(b"__data__", repr(item).encode()),
                              error=error, deliveries=1)
            log.error("dead-lettered candle entry %r: %s", entry, error)
    return candles


def build_router(state: InferenceState) -> RedisRouter:
    """Subscribe the candle handlers (batch reader + reclaimer) and the broadcast handlers."""
    router = RedisRouter(middlewares=[ConsumedMessage])
    settings = state.settings
    consumer = settings.consumer_name
    stream, group = Stream.CANDLE_CLOSED.value, Group.INFERENCE.value

    @router.subscriber(
        stream=StreamSub(stream, group=group, consumer=consumer, batch=True, max_records=settings.candle_batch_size,
                         polling_interval=50),
        ack_policy=AckPolicy.MANUAL, title=f"{stream}:{group}",
        description="Batches of CandleClosed entries (each validated on its own; invalid ones are dead-lettered).",
    )
    async def on_candles_closed(body: list[Any]) -> None:
        msg: Any = _consumed.get()  # a RedisBatchStreamMessage
        candles = await _valid_candles(body, msg, state)
        await handle_candle_batch(candles, state, entry_ids=msg.raw_message["message_ids"], ack=msg.ack)

    @router.subscriber(
        stream=StreamSub(stream, group=group, consumer=f"{consumer}-reclaim", min_idle_time=settings.reclaim_idle_ms,
                         polling_interval=settings.reclaim_poll_ms),
        ack_policy=AckPolicy.REJECT_ON_ERROR, title=f"{stream}:{group}:reclaim", include_in_schema=False,
    )
    async def on_candle_reclaimed(candle: CandleClosed) -> None:
        await handle_candle(candle, state)

    @fanout_subscriber(router, Stream.MODEL_ACTIVATED, polling_interval=50)  # type: ignore[untyped-decorator]
    async def on_model_activated(event: ModelActivated) -> None:
        await handle_activated(event, state)

    @fanout_subscriber(router, Stream.CHALLENGERS_CHANGED, polling_interval=200)  # type: ignore[untyped-decorator]
    async def on_challengers_changed(event: ChallengersChanged) -> None:
        await handle_challengers_changed(event, state)

    return router

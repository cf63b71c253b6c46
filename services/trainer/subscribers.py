"""Consumes tradeloop.cmd.retrain-model (group trainer); produces model-trained / retrain-failed / progress."""

from __future__ import annotations

from faststream.redis import RedisRouter, RedisStreamMessage

from services.trainer.handlers import TrainerDeps, handle_retrain
from shared.broker import Redis, entry_id, hold_lease, work_subscriber
from shared.messages import RetrainModel
from shared.streams import Group, Stream


def build_router(deps: TrainerDeps, redis: Redis) -> RedisRouter:
    """Subscribe the retrain handler (reader + reclaimer, one command at a time)."""
    router = RedisRouter()
    settings = deps.settings

    @work_subscriber(router, Stream.RETRAIN_MODEL, Group.TRAINER, settings, max_records=1)
    async def on_retrain_model(command: RetrainModel, msg: RedisStreamMessage) -> None:
        entry = entry_id(msg)
        key = command.idempotency_key or f"{Stream.RETRAIN_MODEL.value}:{entry}"
        async with hold_lease(
            redis,
            stream=Stream.RETRAIN_MODEL.value,
            group=Group.TRAINER.value,
            consumer=settings.consumer_name,
            entry=entry,
            every_seconds=settings.lease_seconds,
        ):
            await handle_retrain(command, key=key, deps=deps)

    return router

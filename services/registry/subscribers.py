"""Consumes model-trained and activate-model (group registry); produces model-activated / activation-rejected."""

from __future__ import annotations

from faststream.redis import RedisRouter

from services.registry.handlers import RegistryDeps, handle_activate, handle_model_trained
from shared.broker import work_subscriber
from shared.messages import ActivateModel, ModelTrained
from shared.streams import Group, Stream


def build_router(deps: RegistryDeps) -> RedisRouter:
    """Subscribe the registry's handlers (reader + reclaimer each)."""
    router = RedisRouter()

    @work_subscriber(router, Stream.MODEL_TRAINED, Group.REGISTRY, deps.settings)
    async def on_model_trained(event: ModelTrained) -> None:
        await handle_model_trained(event, deps)

    @work_subscriber(router, Stream.ACTIVATE_MODEL, Group.REGISTRY, deps.settings)
    async def on_activate_model(command: ActivateModel) -> None:
        await handle_activate(command, deps)

    return router

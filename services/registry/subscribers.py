"""Consumes model-trained, activate/rollback/add-challenger/remove-challenger/archive commands and
trade-outcome-recorded (group registry); produces model-activated, challengers-changed, model-archived,
promotion-decided, activation-rejected and command-rejected."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from faststream.redis import RedisRouter

from services.registry import challengers, promotion, scoring
from services.registry.handlers import Refused, RegistryDeps, handle_activate, handle_model_trained
from shared.broker import work_subscriber
from shared.messages import (
    ActivateModel,
    AddChallenger,
    ArchiveModel,
    CommandRejected,
    Message,
    ModelTrained,
    RemoveChallenger,
    RollbackModel,
    TradeOutcomeRecorded,
)
from shared.streams import Group, Stream


async def refusing(deps: RegistryDeps, command: Message, action: Callable[[], Awaitable[object]]) -> None:
    """Run a registry command; a refusal is published as CommandRejected and changes nothing."""
    try:
        await action()
    except Refused as refusal:
        deps.metrics.rejections.inc()
        await deps.publisher.publish(CommandRejected(command=type(command).__name__, command_event_id=command.event_id,
                                                     reason=str(refusal)))


def build_router(deps: RegistryDeps) -> RedisRouter:
    """Subscribe the registry's handlers (reader + reclaimer each)."""
    router = RedisRouter()

    def subscribe(stream: Stream) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
        return work_subscriber(router, stream, Group.REGISTRY, deps.settings)

    @subscribe(Stream.MODEL_TRAINED)
    async def on_model_trained(event: ModelTrained) -> None:
        version = await handle_model_trained(event, deps)
        if version is not None:
            await promotion.judge_new_version(deps, version)

    @subscribe(Stream.ACTIVATE_MODEL)
    async def on_activate_model(command: ActivateModel) -> None:
        await handle_activate(command, deps)

    @subscribe(Stream.ROLLBACK_MODEL)
    async def on_rollback_model(command: RollbackModel) -> None:
        await refusing(deps, command, lambda: challengers.rollback(
            deps, command.slot, to_version_id=command.to_version_id, actor=command.requested_by,
            reason=command.reason, command_id=command.event_id))

    @subscribe(Stream.ADD_CHALLENGER)
    async def on_add_challenger(command: AddChallenger) -> None:
        await refusing(deps, command, lambda: challengers.add_challenger(
            deps, command.version_id, actor=command.requested_by, reason=command.reason))

    @subscribe(Stream.REMOVE_CHALLENGER)
    async def on_remove_challenger(command: RemoveChallenger) -> None:
        await refusing(deps, command, lambda: challengers.remove_challenger(
            deps, command.version_id, actor=command.requested_by, reason=command.reason))

    @subscribe(Stream.ARCHIVE_MODEL)
    async def on_archive_model(command: ArchiveModel) -> None:
        await refusing(deps, command, lambda: challengers.archive(
            deps, command.version_id, actor=command.requested_by, reason=command.reason))

    @subscribe(Stream.TRADE_OUTCOME_RECORDED)
    async def on_trade_outcome_recorded(event: TradeOutcomeRecorded) -> None:
        await scoring.handle_outcome(deps, event)

    return router

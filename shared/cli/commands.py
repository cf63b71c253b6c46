"""CLI commands that talk to Redis and the database (what any client could do with XADD and SQL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.broker import make_redis
from shared.db.migrate import upgrade
from shared.db.models import ActivationHistory, ModelVersion, SlotChampion, VersionStats
from shared.db.session import make_engine, make_sessionmaker
from shared.messages import (
    STREAM_MESSAGES,
    ActivateModel,
    ActivationRejected,
    AddChallenger,
    ArchiveModel,
    ChallengersChanged,
    CommandRejected,
    Family,
    Message,
    ModelActivated,
    ModelArchived,
    ModelTrained,
    RemoveChallenger,
    RetrainFailed,
    RetrainModel,
    RetrainOverrides,
    RollbackModel,
    Slot,
)
from shared.publishing import EventPublisher
from shared.settings import ServiceSettings
from shared.streams import Stream
from shared.waiting import tail_ids, wait_for


@contextlib.asynccontextmanager
async def open_database(settings: ServiceSettings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Open (and migrate) the configured database for one command."""
    engine = make_engine(settings.effective_database_url)
    try:
        await upgrade(engine)
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


def _print(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


async def publish_and_wait(
    settings: ServiceSettings, command: Message, answers: list[Stream], match: Any, wait: float
) -> Message | None:
    """XADD ``command``; if ``wait`` > 0, return the first answer event that ``match`` accepts."""
    redis = make_redis(settings.redis_url)
    try:
        after = await tail_ids(redis, answers)
        entry = await EventPublisher(redis).publish(command)
        sys.stderr.write(f"published {type(command).__name__} {command.event_id} as entry {entry}\n")
        if wait <= 0:
            return None
        return await wait_for(redis, answers, match, after=after, timeout=wait)
    finally:
        await redis.aclose()


def retrain(settings: ServiceSettings, args: Any) -> int:
    """Publish RetrainModel; with --wait print the resulting version or failure."""
    command = RetrainModel(
        slot=Slot(family=Family(args.family), market=args.market, timeframe=args.timeframe, pattern=args.pattern),
        overrides=RetrainOverrides(min_samples=args.min_samples, window_days=args.window_days, horizon=args.horizon),
        requested_by=args.requested_by,
        idempotency_key=args.idempotency_key,
    )
    command_id = str(command.event_id)

    def match(message: Message) -> bool:
        if isinstance(message, RetrainFailed):
            return str(message.command_event_id) == command_id
        return isinstance(message, ModelTrained) and message.lineage.get("command_event_id") == command_id

    result = asyncio.run(publish_and_wait(settings, command, [Stream.MODEL_TRAINED, Stream.RETRAIN_FAILED],
                                          match, args.wait))
    return _report(result, args.wait, ok=ModelTrained)


def activate(settings: ServiceSettings, args: Any) -> int:
    """Publish ActivateModel; with --wait print the activation or the refusal."""
    command = ActivateModel(version_id=args.version, requested_by=args.requested_by, reason=args.reason)

    def match(message: Message) -> bool:
        if isinstance(message, ActivationRejected):
            return message.command_event_id == command.event_id
        return isinstance(message, ModelActivated) and message.version_id == args.version

    result = asyncio.run(publish_and_wait(settings, command, [Stream.MODEL_ACTIVATED, Stream.ACTIVATION_REJECTED],
                                          match, args.wait))
    return _report(result, args.wait, ok=ModelActivated)


def _report(result: Message | None, wait: float, ok: type[Message]) -> int:
    if wait <= 0:
        return 0
    if result is None:
        sys.stderr.write(f"no answer within {wait:g} s (is the service running?)\n")
        return 3
    _print(result.model_dump(mode="json"))
    return 0 if isinstance(result, ok) else 1


async def _models(settings: ServiceSettings, slot: str | None) -> list[dict[str, Any]]:
    async with open_database(settings) as sessions, sessions() as session:
        champions = {c.version_id: c for c in (await session.execute(select(SlotChampion))).scalars()}
        statement = (
            select(ModelVersion, VersionStats)
            .join(VersionStats, VersionStats.version_id == ModelVersion.version_id, isouter=True)
            .order_by(ModelVersion.trained_at)
        )
        if slot:
            statement = statement.where(ModelVersion.slot_key == slot)
        rows = (await session.execute(statement)).all()
    return [
        {
            "version_id": v.version_id,
            "slot": v.slot_key,
            "trained_at": v.trained_at.isoformat(),
            "training_samples": v.training_samples,
            "validation_samples": v.validation_samples,
            "train_accuracy": v.train_accuracy,
            "validation_accuracy": v.validation_accuracy,
            "validation_mae": v.validation_mae,
            "champion": v.version_id in champions,
            "epoch": champions[v.version_id].epoch if v.version_id in champions else None,
            "total_predictions": s.total_predictions if s else 0,
            "status": v.status,
        }
        for v, s in rows
    ]


def models(settings: ServiceSettings, args: Any) -> int:
    """List versions with metrics and the champion flag."""
    rows = asyncio.run(_models(settings, args.slot))
    if args.json:
        _print(rows)
        return 0
    header = f"{'version':<22} {'slot':<22} {'champion':<9} {'val_acc':>8} {'val_mae':>9} {'train_n':>8} {'val_n':>6}"
    sys.stdout.write(header + "\n")
    for r in rows:
        acc = f"{r['validation_accuracy']:.3f}" if r["validation_accuracy"] is not None else "-"
        mae = f"{r['validation_mae']:.5f}" if r["validation_mae"] is not None else "-"
        flag = f"yes ({r['epoch']})" if r["champion"] else ""
        sys.stdout.write(f"{r['version_id']:<22} {r['slot']:<22} {flag:<9} {acc:>8} {mae:>9} "
                         f"{r['training_samples']:>8} {r['validation_samples']:>6}\n")
    return 0


def history(settings: ServiceSettings, args: Any) -> int:
    """Print the activation history."""

    async def read() -> list[dict[str, Any]]:
        async with open_database(settings) as sessions, sessions() as session:
            rows = (await session.execute(select(ActivationHistory).order_by(ActivationHistory.id))).scalars()
            return [{"slot": r.slot_key, "epoch": r.epoch, "from": r.from_version_id, "to": r.to_version_id,
                     "actor": r.actor, "reason": r.reason, "policy": r.policy,
                     "at": r.activated_at.isoformat()} for r in rows]

    _print(asyncio.run(read()))
    return 0


def migrate(settings: ServiceSettings, _args: Any) -> int:
    """Upgrade the database to the newest schema."""

    async def run() -> None:
        async with open_database(settings):
            pass

    asyncio.run(run())
    sys.stderr.write("database at the newest schema\n")
    return 0


def dead_letters(settings: ServiceSettings, args: Any) -> int:
    """Print the entries of a stream's dead-letter stream."""

    async def read() -> list[dict[str, Any]]:
        redis = make_redis(settings.redis_url)
        try:
            entries: Any = await redis.xrange(f"{Stream(args.stream).value}.dlq", count=args.count)
        finally:
            await redis.aclose()
        return [{"id": i.decode(), **{k.decode(): v.decode(errors="replace") for k, v in f.items()}}
                for i, f in entries]

    _print(asyncio.run(read()))
    return 0


def _registry_command(settings: ServiceSettings, command: Message, success: Stream, matches: Any, wait: float) -> int:
    def match(message: Message) -> bool:
        if isinstance(message, CommandRejected):
            return message.command_event_id == command.event_id
        return bool(matches(message))

    result = asyncio.run(publish_and_wait(settings, command, [success, Stream.COMMAND_REJECTED], match, wait))
    return _report(result, wait, ok=STREAM_MESSAGES[success])


def rollback(settings: ServiceSettings, args: Any) -> int:
    """Publish RollbackModel (previous champion, or --to VERSION)."""
    slot = Slot.from_key(args.slot)
    command = RollbackModel(slot=slot, to_version_id=args.to, requested_by=args.requested_by, reason=args.reason)
    return _registry_command(settings, command, Stream.MODEL_ACTIVATED,
                             lambda m: isinstance(m, ModelActivated) and m.slot.key == slot.key, args.wait)


def shadow(settings: ServiceSettings, args: Any) -> int:
    """Publish AddChallenger / RemoveChallenger."""
    kind = AddChallenger if args.action == "add" else RemoveChallenger
    command = kind(version_id=args.version, requested_by=args.requested_by, reason=args.reason)
    wanted = args.action == "add"

    def matches(message: Message) -> bool:
        return isinstance(message, ChallengersChanged) and wanted == any(
            c.version_id == args.version for c in message.challengers)

    return _registry_command(settings, command, Stream.CHALLENGERS_CHANGED, matches, args.wait)


def archive(settings: ServiceSettings, args: Any) -> int:
    """Publish ArchiveModel."""
    command = ArchiveModel(version_id=args.version, requested_by=args.requested_by, reason=args.reason)
    return _registry_command(settings, command, Stream.MODEL_ARCHIVED,
                             lambda m: isinstance(m, ModelArchived) and m.version_id == args.version, args.wait)

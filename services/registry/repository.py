"""Registry storage: write-once versions, the champion alias per slot, append-only history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import ActivationHistory, ModelVersion, SlotChampion, VersionStats
from shared.db.session import dialect_insert, rows_affected
from shared.messages import ModelTrained, utc_now


async def register_version(sessions: async_sessionmaker[AsyncSession], event: ModelTrained) -> bool:
    """Record a trained version once; return False when it was already recorded."""
    metrics = event.metrics
    async with sessions() as session, session.begin():
        statement = (
            dialect_insert(session, ModelVersion)
            .values(
                version_id=event.version_id,
                slot_key=event.slot.key,
                family=event.slot.family.value,
                market=event.slot.market,
                timeframe=event.slot.timeframe,
                pattern=event.slot.pattern,
                model_type=event.model_type,
                run_id=event.run_id,
                trained_at=event.trained_at,
                training_samples=event.training_samples,
                validation_samples=event.validation_samples,
                train_accuracy=metrics.get("train_accuracy"),
                validation_accuracy=metrics.get("validation_accuracy"),
                train_mae=metrics.get("train_mae"),
                validation_mae=metrics.get("validation_mae"),
                metrics=dict(metrics),
                params=dict(event.params),
                lineage=dict(event.lineage),
                artifact_path=event.artifact.path,
                artifact_sha256=event.artifact.sha256,
                artifact_size=event.artifact.size,
                feature_schema_hash=event.feature_schema_hash,
                status="ready",
            )
            .on_conflict_do_nothing(index_elements=["version_id"])
        )
        created = rows_affected(await session.execute(statement)) == 1
        if created:
            session.add(VersionStats(version_id=event.version_id, total_predictions=0, correct_predictions=0,
                                     total_pnl=0.0))
        return created


async def get_version(sessions: async_sessionmaker[AsyncSession], version_id: str) -> ModelVersion | None:
    """One version, or None."""
    async with sessions() as session:
        return await session.get(ModelVersion, version_id)


@dataclass(frozen=True)
class Activation:
    """The outcome of an activation: the history row written (or found, on a repeated command)."""

    slot_key: str
    version_id: str
    previous_version_id: str | None
    epoch: int
    actor: str
    reason: str
    policy: str
    activated_at: datetime
    repeated: bool


def _activation(row: ActivationHistory, repeated: bool) -> Activation:
    return Activation(
        slot_key=row.slot_key, version_id=row.to_version_id, previous_version_id=row.from_version_id,
        epoch=row.epoch, actor=row.actor, reason=row.reason, policy=row.policy,
        activated_at=row.activated_at, repeated=repeated,
    )


async def activate(
    sessions: async_sessionmaker[AsyncSession],
    version: ModelVersion,
    *,
    actor: str,
    reason: str,
    policy: str,
    command_event_id: str,
    attempts: int = 5,
) -> Activation:
    """Make ``version`` its slot's champion and append the history row, in one transaction.

    Concurrent activations of a slot serialise on the (slot, epoch) uniqueness of the history: the
    loser retries on the new epoch, so the history stays a single consistent chain.
    """
    for _ in range(attempts):
        try:
            return await _activate_once(sessions, version, actor=actor, reason=reason, policy=policy,
                                        command_event_id=command_event_id)
        except IntegrityError:
            continue
    raise RuntimeError(f"activation of {version.version_id} kept conflicting")


async def _activate_once(
    sessions: async_sessionmaker[AsyncSession],
    version: ModelVersion,
    *,
    actor: str,
    reason: str,
    policy: str,
    command_event_id: str,
) -> Activation:
    async with sessions() as session, session.begin():
        done = (
            await session.execute(
                select(ActivationHistory).where(ActivationHistory.command_event_id == command_event_id)
            )
        ).scalar_one_or_none()
        if done is not None:
            return _activation(done, repeated=True)
        champion = (
            await session.execute(
                select(SlotChampion).where(SlotChampion.slot_key == version.slot_key).with_for_update()
            )
        ).scalar_one_or_none()
        now = utc_now()
        previous = champion.version_id if champion else None
        epoch = (champion.epoch if champion else 0) + 1
        if champion is None:
            session.add(SlotChampion(slot_key=version.slot_key, version_id=version.version_id, epoch=epoch,
                                     activated_at=now))
        else:
            champion.version_id, champion.epoch, champion.activated_at = version.version_id, epoch, now
        row = ActivationHistory(
            slot_key=version.slot_key, epoch=epoch, from_version_id=previous, to_version_id=version.version_id,
            actor=actor, reason=reason, policy=policy, command_event_id=command_event_id, activated_at=now,
        )
        session.add(row)
        await session.flush()
        return _activation(row, repeated=False)


async def champions(sessions: async_sessionmaker[AsyncSession]) -> dict[str, SlotChampion]:
    """Current champion of every slot."""
    async with sessions() as session:
        rows = (await session.execute(select(SlotChampion))).scalars().all()
        return {row.slot_key: row for row in rows}


async def list_versions(
    sessions: async_sessionmaker[AsyncSession], slot_key: str | None = None
) -> list[tuple[ModelVersion, VersionStats | None]]:
    """Versions (newest first) with their live stats."""
    async with sessions() as session:
        statement = (
            select(ModelVersion, VersionStats)
            .join(VersionStats, VersionStats.version_id == ModelVersion.version_id, isouter=True)
            .order_by(ModelVersion.trained_at.desc())
        )
        if slot_key:
            statement = statement.where(ModelVersion.slot_key == slot_key)
        return [(v, s) for v, s in (await session.execute(statement)).all()]


async def history(sessions: async_sessionmaker[AsyncSession], slot_key: str | None = None) -> list[ActivationHistory]:
    """Activation history, oldest first."""
    async with sessions() as session:
        statement = select(ActivationHistory).order_by(ActivationHistory.id)
        if slot_key:
            statement = statement.where(ActivationHistory.slot_key == slot_key)
        return list((await session.execute(statement)).scalars().all())


async def champion_at(
    sessions: async_sessionmaker[AsyncSession], slot_key: str, moment: datetime
) -> ActivationHistory | None:
    """The activation that made the champion of ``slot_key`` at ``moment`` (None before the first)."""
    async with sessions() as session:
        statement = (
            select(ActivationHistory)
            .where(ActivationHistory.slot_key == slot_key, ActivationHistory.activated_at <= moment)
            .order_by(ActivationHistory.epoch.desc())
            .limit(1)
        )
        return (await session.execute(statement)).scalar_one_or_none()

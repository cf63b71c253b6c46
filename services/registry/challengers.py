"""Shadow challengers, archiving and rollback: alias moves with an append-only record, never version edits."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.registry import repository
from services.registry.handlers import Refused, RegistryDeps, activate_version, artifact_ref, check_activatable
from shared.db.models import ActivationHistory, ModelVersion, SlotChampion
from shared.db.models_registry import ArchivedVersion, ChallengerHistory, SlotChallenger
from shared.messages import (
    ChallengerRef,
    ChallengersChanged,
    ModelActivated,
    ModelArchived,
    Slot,
    utc_now,
)

log = logging.getLogger(__name__)


async def _champion_of(session: AsyncSession, slot_key: str) -> str | None:
    champion = await session.get(SlotChampion, slot_key)
    return champion.version_id if champion else None


async def _change_challengers(
    deps: RegistryDeps, version: ModelVersion, *, add: bool, actor: str, reason: str
) -> ChallengersChanged:
    """Add or remove one challenger and record the new revision, in one transaction; publish the new set."""
    async with deps.sessions() as session, session.begin():
        present = await session.get(SlotChallenger, (version.slot_key, version.version_id))
        if add and present is None:
            session.add(SlotChallenger(slot_key=version.slot_key, version_id=version.version_id, added_at=utc_now(),
                                       actor=actor))
        elif not add and present is not None:
            await session.delete(present)
        elif not add:
            raise Refused(f"version {version.version_id} is not a challenger of {version.slot_key}")
        revision = (await session.execute(select(func.coalesce(func.max(ChallengerHistory.revision), 0)).where(
            ChallengerHistory.slot_key == version.slot_key))).scalar_one() + 1
        session.add(ChallengerHistory(slot_key=version.slot_key, revision=revision, version_id=version.version_id,
                                      action="add" if add else "remove", actor=actor, reason=reason,
                                      changed_at=utc_now()))
        await session.flush()
        members = (await session.execute(select(ModelVersion).join(
            SlotChallenger, SlotChallenger.version_id == ModelVersion.version_id).where(
            SlotChallenger.slot_key == version.slot_key).order_by(ModelVersion.trained_at))).scalars().all()
    event = ChallengersChanged(
        slot=Slot.from_key(version.slot_key),
        challengers=[ChallengerRef(version_id=m.version_id, artifact=artifact_ref(m),
                                   feature_schema_hash=m.feature_schema_hash) for m in members],
        revision=revision, actor=actor, reason=reason)
    await deps.publisher.publish(event)
    log.info("challengers of %s now %s (revision %d)", version.slot_key,
             [c.version_id for c in event.challengers], revision)
    return event


async def add_challenger(deps: RegistryDeps, version_id: str, *, actor: str, reason: str) -> ChallengersChanged:
    """Run ``version_id`` in shadow next to its slot's champion."""
    version = await check_activatable(deps, version_id, None)
    async with deps.sessions() as session:
        if await _champion_of(session, version.slot_key) == version_id:
            raise Refused(f"version {version_id} is the champion of {version.slot_key}")
    return await _change_challengers(deps, version, add=True, actor=actor, reason=reason)


async def remove_challenger(deps: RegistryDeps, version_id: str, *, actor: str, reason: str) -> ChallengersChanged:
    """Stop running ``version_id`` in shadow."""
    version = await repository.get_version(deps.sessions, version_id)
    if version is None:
        raise Refused(f"unknown version {version_id}")
    return await _change_challengers(deps, version, add=False, actor=actor, reason=reason)


async def archive(deps: RegistryDeps, version_id: str, *, actor: str, reason: str) -> ModelArchived:
    """Archive a version that is not champion (it leaves the shadow set first)."""
    version = await repository.get_version(deps.sessions, version_id)
    if version is None:
        raise Refused(f"unknown version {version_id}")
    async with deps.sessions() as session:
        if await _champion_of(session, version.slot_key) == version_id:
            raise Refused(f"version {version_id} is champion of {version.slot_key}; activate another first")
        if await session.get(ArchivedVersion, version_id) is not None:
            raise Refused(f"version {version_id} is already archived")
        shadowed = await session.get(SlotChallenger, (version.slot_key, version_id))
    if shadowed is not None:
        await _change_challengers(deps, version, add=False, actor=actor, reason=f"archived: {reason}")
    async with deps.sessions() as session, session.begin():
        session.add(ArchivedVersion(version_id=version_id, archived_at=utc_now(), actor=actor, reason=reason))
    event = ModelArchived(version_id=version_id, slot=Slot.from_key(version.slot_key), actor=actor, reason=reason)
    await deps.publisher.publish(event)
    return event


async def previous_champion(deps: RegistryDeps, slot_key: str) -> str | None:
    """The version that was champion before the current one."""
    async with deps.sessions() as session:
        latest = (await session.execute(select(ActivationHistory).where(ActivationHistory.slot_key == slot_key)
                                        .order_by(ActivationHistory.epoch.desc()).limit(1))).scalar_one_or_none()
    return latest.from_version_id if latest else None


async def rollback(
    deps: RegistryDeps, slot: Slot, *, to_version_id: str | None, actor: str, reason: str, policy: str = "rollback",
    command_id: uuid.UUID | None = None,
) -> ModelActivated:
    """Restore the previous champion (or ``to_version_id``) after checking its hash and that it loads."""
    target = to_version_id or await previous_champion(deps, slot.key)
    if target is None:
        raise Refused(f"slot {slot.key} has no previous champion to roll back to")
    version = await check_activatable(deps, target, slot.key)
    async with deps.sessions() as session:
        if await _champion_of(session, slot.key) == target:
            raise Refused(f"version {target} is already champion of {slot.key}")
    return await activate_version(deps, version, actor=actor, reason=reason or "rollback", policy=policy,
                                  command_id=command_id or uuid.uuid4())


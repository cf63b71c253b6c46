"""One retrain run per slot at a time, across replicas: a lease row per slot in ``trainer_slot_leases``.

``acquire`` is one atomic upsert: it inserts the slot's row, or takes it over when the row already
belongs to the same run (a replica finishing a dead one's command) or when its heartbeat is older
than ``stale_after`` seconds (its holder died and nobody finishes it). Otherwise the row stays,
and the caller learns which run holds the slot (the command is then coalesced into that run).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models_trainer import TrainerSlotLease
from shared.db.session import dialect_insert, rows_affected
from shared.messages import utc_now
from shared.periodic import every

log = logging.getLogger(__name__)


async def acquire(
    sessions: async_sessionmaker[AsyncSession], slot_key: str, run_id: str, owner: str, stale_after: float
) -> str:
    """Try to hold ``slot_key`` for ``run_id``; return the run that holds it afterwards."""
    now = utc_now()
    async with sessions() as session, session.begin():
        statement = dialect_insert(session, TrainerSlotLease).values(
            slot_key=slot_key, run_id=run_id, owner=owner, acquired_at=now, heartbeat_at=now
        )
        statement = statement.on_conflict_do_update(
            index_elements=["slot_key"],
            set_={"run_id": run_id, "owner": owner, "acquired_at": now, "heartbeat_at": now},
            where=or_(
                TrainerSlotLease.run_id == run_id,
                TrainerSlotLease.heartbeat_at < now - timedelta(seconds=stale_after),
            ),
        )
        await session.execute(statement)
        holder = (
            await session.execute(select(TrainerSlotLease.run_id).where(TrainerSlotLease.slot_key == slot_key))
        ).scalar_one()
    return str(holder)


async def renew(sessions: async_sessionmaker[AsyncSession], slot_key: str, run_id: str) -> bool:
    """Refresh the heartbeat; False when the lease is no longer this run's."""
    async with sessions() as session, session.begin():
        result = await session.execute(
            update(TrainerSlotLease)
            .where(TrainerSlotLease.slot_key == slot_key, TrainerSlotLease.run_id == run_id)
            .values(heartbeat_at=utc_now())
        )
    return rows_affected(result) == 1


async def release(sessions: async_sessionmaker[AsyncSession], slot_key: str, run_id: str) -> None:
    """Free the slot if this run still holds it."""
    async with sessions() as session, session.begin():
        await session.execute(
            delete(TrainerSlotLease).where(TrainerSlotLease.slot_key == slot_key, TrainerSlotLease.run_id == run_id)
        )


async def holder_of(sessions: async_sessionmaker[AsyncSession], slot_key: str) -> str | None:
    """The run holding ``slot_key`` (None when free)."""
    async with sessions() as session:
        found = await session.execute(select(TrainerSlotLease.run_id).where(TrainerSlotLease.slot_key == slot_key))
        return found.scalar_one_or_none()


@contextlib.asynccontextmanager
async def heartbeat(
    sessions: async_sessionmaker[AsyncSession], slot_key: str, run_id: str, every_seconds: float
) -> AsyncIterator[None]:
    """Renew the slot lease every ``every_seconds`` while the body runs; release it afterwards."""

    async def renewal() -> None:
        if not await renew(sessions, slot_key, run_id):
            log.warning("slot %s is no longer held by run %s", slot_key, run_id)

    try:
        async with every(every_seconds, renewal, what=f"slot lease renewal for {slot_key}"):
            yield
    finally:
        try:
            await release(sessions, slot_key, run_id)
        except Exception as error:  # the lease then expires after the stale limit
            log.warning("releasing slot %s failed: %r", slot_key, error)

"""Retrain-run bookkeeping in the database: idempotent start, version-id reservation, finish.

A run's status: ``running`` → ``succeeded`` | ``failed`` | ``coalesced`` (its command arrived while
another run of the same slot was training, and is answered by that run).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import RetrainRun
from shared.db.session import dialect_insert, rows_affected
from shared.messages import RetrainModel, utc_now


@dataclass(frozen=True)
class RunState:
    """A run as found or created for a command."""

    run_id: str
    status: str
    result: dict[str, Any] | None
    created: bool


async def start_run(sessions: async_sessionmaker[AsyncSession], command: RetrainModel, key: str) -> RunState:
    """Create the run for ``key`` or return the existing one (same key → same run)."""
    async with sessions() as session, session.begin():
        statement = (
            dialect_insert(session, RetrainRun)
            .values(
                run_id=uuid.uuid4().hex,
                idempotency_key=key,
                slot_key=command.slot.key,
                status="running",
                requested_by=command.requested_by,
                command_event_id=str(command.event_id),
                started_at=utc_now(),
                durations={},
            )
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
        )
        inserted = rows_affected(await session.execute(statement)) == 1
        run = (await session.execute(select(RetrainRun).where(RetrainRun.idempotency_key == key))).scalar_one()
        return RunState(run_id=run.run_id, status=run.status, result=run.result, created=inserted)


def version_candidates(trained_at: datetime) -> list[str]:
    """Seed-003 version ids for ``trained_at``: ``v20251112_150000``, then ``…_2``, ``…_3``, …"""
    base = trained_at.strftime("v%Y%m%d_%H%M%S")
    return [base, *(f"{base}_{n}" for n in range(2, 100))]


async def reserve_version_id(sessions: async_sessionmaker[AsyncSession], run_id: str, trained_at: datetime) -> str:
    """Give the run a version id unique across slots and replicas (the first free candidate)."""
    async with sessions() as session:
        async with session.begin():
            existing = (
                await session.execute(select(RetrainRun.version_id).where(RetrainRun.run_id == run_id))
            ).scalar_one()
        if existing:
            return existing
        for candidate in version_candidates(trained_at):
            try:
                async with session.begin():
                    await session.execute(
                        update(RetrainRun).where(RetrainRun.run_id == run_id).values(version_id=candidate)
                    )
                return candidate
            except IntegrityError:
                continue
    raise RuntimeError(f"no free version id for {trained_at}")


async def coalesce_run(sessions: async_sessionmaker[AsyncSession], run_id: str, *, into: str) -> None:
    """Record that the command of ``run_id`` was folded into the slot's running run ``into`` (no training)."""
    async with sessions() as session, session.begin():
        await session.execute(
            update(RetrainRun)
            .where(RetrainRun.run_id == run_id)
            .values(status="coalesced", finished_at=utc_now(), result={"coalesced_into": into})
        )


async def finish_run(
    sessions: async_sessionmaker[AsyncSession],
    run_id: str,
    *,
    status: str,
    durations: dict[str, float],
    result: dict[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> None:
    """Record the run's outcome."""
    async with sessions() as session, session.begin():
        await session.execute(
            update(RetrainRun)
            .where(RetrainRun.run_id == run_id)
            .values(
                status=status,
                finished_at=utc_now(),
                durations=durations,
                result=result,
                error_code=error_code,
                error_message=error_message,
            )
        )

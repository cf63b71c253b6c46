"""Scheduled retraining: a UTC cron (default daily 03:00, seed 003) publishes RetrainModel per configured slot.

Every trainer replica runs the scheduler; exactly one command per (slot, tick) reaches the stream:
the command's idempotency key is ``schedule:<slot>:<tick iso>`` and it is published with
:meth:`EventPublisher.publish_once` keyed on it (SET NX + XADD in one script). The command's
``occurred_at`` is the tick and its ``event_id`` is derived from the key, so replicas publish
identical commands and the run's data window is pinned to the tick. Runs dedupe by the same key.
At start a tick missed by at most ``retrain_misfire_grace_seconds`` is published too (again once).

Configuration only: ``TRADELOOP_RETRAIN_ENABLED``, ``TRADELOOP_RETRAIN_CRON`` (5 fields, or 6 with
seconds last), ``TRADELOOP_RETRAIN_SLOTS`` (``xgboost:BTC-EUR:1h,cnn:ETH-EUR:1h:bullFlag``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from croniter import croniter

from services.trainer.settings import TrainerSettings
from shared.messages import RetrainModel, Slot, utc_now
from shared.publishing import EventPublisher
from shared.tasks import cancel_and_wait, raise_if_cancelling

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]
_NAMESPACE = uuid.UUID("6f1d3c3e-5b1a-4c1e-9a63-7f2b8d0c1e55")


def schedule_key(slot: Slot, tick: datetime) -> str:
    """The idempotency key of ``slot``'s scheduled run at ``tick``."""
    return f"schedule:{slot.key}:{tick.astimezone(UTC).isoformat()}"


def scheduled_command(slot: Slot, tick: datetime) -> RetrainModel:
    """The command every replica builds for (slot, tick): identical across replicas."""
    key = schedule_key(slot, tick)
    return RetrainModel(
        event_id=uuid.uuid5(_NAMESPACE, key),
        occurred_at=tick,
        slot=slot,
        requested_by="scheduler",
        idempotency_key=key,
    )


class RetrainScheduler:
    """Publishes the scheduled commands of each cron tick (``clock`` and ``sleep`` are injectable)."""

    def __init__(
        self,
        settings: TrainerSettings,
        publisher: EventPublisher,
        *,
        clock: Clock = utc_now,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.slots = settings.scheduled_slots
        self.clock = clock
        self.sleep = sleep
        self.published = 0
        self._task: asyncio.Task[None] | None = None

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after ``after``."""
        tick: datetime = croniter(self.settings.retrain_cron, after.astimezone(UTC)).get_next(datetime)
        return tick.astimezone(UTC)

    def previous_tick(self, before: datetime) -> datetime:
        """The last tick at or before ``before``."""
        moment = before.astimezone(UTC) + timedelta(microseconds=1)
        tick: datetime = croniter(self.settings.retrain_cron, moment).get_prev(datetime)
        return tick.astimezone(UTC)

    async def fire(self, tick: datetime) -> int:
        """Publish the tick's commands (once across replicas); return how many were new here."""
        commands = [scheduled_command(slot, tick) for slot in self.slots]
        new = await self.publisher.publish_once([(command.idempotency_key or "", command) for command in commands])
        self.published += new
        log.info("retrain tick %s: %d slot(s), %d published here", tick.isoformat(), len(commands), new)
        return new

    async def run(self) -> None:
        """Fire every tick until cancelled (a failed publish is logged and retried at the next tick)."""
        now = self.clock()
        last = self.previous_tick(now)
        if (now - last).total_seconds() <= self.settings.retrain_misfire_grace_seconds:
            await self._fire_safely(last)
        while True:
            raise_if_cancelling()  # a stop() landing as a publication finished: never sleep on to the next tick
            tick = self.next_tick(last)
            delay = (tick - self.clock()).total_seconds()
            if delay > 0:
                await self.sleep(delay)
            await self._fire_safely(tick)
            last = tick

    async def _fire_safely(self, tick: datetime) -> None:
        try:
            await self.fire(tick)
        except Exception as error:
            log.error("scheduled retrain at %s not published: %r", tick.isoformat(), error)

    async def start(self) -> None:
        """Start the loop (a no-op when disabled or without slots)."""
        if not self.settings.retrain_enabled or not self.slots:
            log.info("scheduled retraining off (enabled=%s, slots=%d)", self.settings.retrain_enabled, len(self.slots))
            return
        log.info("scheduled retraining: cron %r (UTC) for %s", self.settings.retrain_cron,
                 ", ".join(slot.key for slot in self.slots))
        self._task = asyncio.create_task(self.run(), name="retrain-scheduler")

    async def stop(self) -> None:
        """Cancel the loop."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

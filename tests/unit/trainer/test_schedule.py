"""Scheduled retraining: configuration only, identical commands across replicas, one key per (slot, tick)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from services.trainer.scheduler import RetrainScheduler, schedule_key, scheduled_command
from services.trainer.settings import TrainerSettings
from shared.messages import Family, RetrainModel, Slot


class FakePublisher:
    """publish_once like EventPublisher's: a key is published once."""

    def __init__(self, seen: set[str] | None = None) -> None:
        self.seen = seen if seen is not None else set()
        self.messages: list[RetrainModel] = []

    async def publish_once(self, messages: list[tuple[str, Any]]) -> int:
        new = 0
        for key, message in messages:
            if key not in self.seen:
                self.seen.add(key)
                self.messages.append(message)
                new += 1
        return new


class FakeTime:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def clock(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        await asyncio.sleep(0)


def test_default_is_daily_at_03_utc_and_slots_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TrainerSettings().retrain_cron == "0 3 * * *"
    monkeypatch.setenv("TRADELOOP_RETRAIN_SLOTS", "xgboost:BTC-EUR:1h, cnn:ETH-EUR:1h:bullFlag,xgboost:BTC-EUR:1h")
    monkeypatch.setenv("TRADELOOP_RETRAIN_CRON", "30 2 * * 1")
    monkeypatch.setenv("TRADELOOP_RETRAIN_ENABLED", "0")
    settings = TrainerSettings()
    assert [slot.key for slot in settings.scheduled_slots] == ["xgboost:BTC-EUR:1h", "cnn:ETH-EUR:1h:bullFlag"]
    assert settings.retrain_cron == "30 2 * * 1" and settings.retrain_enabled is False


@pytest.mark.parametrize("changes", [{"retrain_cron": "every night"}, {"retrain_slots": "xgboost:BTC-EUR"},
                                     {"retrain_slots": "svm:BTC-EUR:1h"}, {"outcome_feature_schema": "latest"}])
def test_bad_configuration_is_refused(changes: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        TrainerSettings(**changes)  # type: ignore[arg-type]


def test_ticks_of_the_default_cron() -> None:
    scheduler = RetrainScheduler(TrainerSettings(), FakePublisher())  # type: ignore[arg-type]
    at = datetime(2026, 11, 23, 2, 59, 59, tzinfo=UTC)
    assert scheduler.next_tick(at) == datetime(2026, 11, 23, 3, tzinfo=UTC)
    assert scheduler.previous_tick(at) == datetime(2026, 11, 22, 3, tzinfo=UTC)
    assert scheduler.previous_tick(datetime(2026, 11, 23, 3, tzinfo=UTC)) == datetime(2026, 11, 23, 3, tzinfo=UTC)
    assert scheduler.next_tick(datetime(2026, 11, 23, 3, tzinfo=UTC)) == datetime(2026, 11, 24, 3, tzinfo=UTC)


def test_replicas_build_the_same_command_for_a_tick() -> None:
    slot, tick = Slot(family=Family.CNN, market="ETH-EUR", timeframe="1h", pattern="bullFlag"), datetime(
        2026, 11, 23, 3, tzinfo=UTC)
    first, second = scheduled_command(slot, tick), scheduled_command(slot, tick)
    assert first == second and first.occurred_at == tick and first.requested_by == "scheduler"
    assert first.idempotency_key == schedule_key(slot, tick) == "schedule:cnn:ETH-EUR:1h:bullFlag:2026-11-23T03:00:00+00:00"
    assert scheduled_command(slot, tick + timedelta(days=1)).event_id != first.event_id


@pytest.mark.asyncio(loop_scope="session")
async def test_two_replicas_on_one_clock_publish_each_tick_once() -> None:
    settings = TrainerSettings(retrain_cron="*/10 * * * *", retrain_slots="xgboost:BTC-EUR:1h,xgboost:ETH-EUR:1h",
                               retrain_misfire_grace_seconds=120)
    seen: set[str] = set()
    fake = FakeTime(datetime(2026, 11, 23, 3, 1, tzinfo=UTC))  # the 03:00 tick was missed by one minute
    replicas = [RetrainScheduler(settings, FakePublisher(seen), clock=fake.clock, sleep=fake.sleep)  # type: ignore[arg-type]
                for _ in range(2)]
    tasks = [asyncio.create_task(replica.run()) for replica in replicas]
    while fake.now < datetime(2026, 11, 23, 3, 35, tzinfo=UTC):
        await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    published = [m for r in replicas for m in r.publisher.messages]  # type: ignore[attr-defined]
    ticks = sorted({m.occurred_at.strftime("%H:%M") for m in published})
    assert ticks[:4] == ["03:00", "03:10", "03:20", "03:30"]
    assert len(published) == len({m.idempotency_key for m in published}) == 2 * len(ticks)


@pytest.mark.asyncio(loop_scope="session")
async def test_disabled_or_slotless_scheduler_does_nothing() -> None:
    for settings in (TrainerSettings(retrain_enabled=False, retrain_slots="xgboost:BTC-EUR:1h"), TrainerSettings()):
        scheduler = RetrainScheduler(settings, FakePublisher())  # type: ignore[arg-type]
        await scheduler.start()
        assert scheduler._task is None
        await scheduler.stop()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_stop_landing_as_a_publication_completes_stops_the_scheduler(
    completing_call: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """stop() in the step the tick's publish_once completes: Python 3.11's wait_for (inside redis-py) drops the
    cancellation; the scheduler must stop anyway rather than sleep on and publish every later tick."""
    settings = TrainerSettings(retrain_cron="* * * * * *", retrain_slots="xgboost:BTC-EUR:1h",
                               retrain_misfire_grace_seconds=0)
    publisher = FakePublisher()
    publisher.publish_once = completing_call  # type: ignore[method-assign]
    completing_call.result = 1
    scheduler = RetrainScheduler(settings, publisher)  # type: ignore[arg-type]
    await scheduler.start()
    task = scheduler._task
    await asyncio.wait_for(completing_call.started.wait(), 5.0)  # the next second's tick is being published
    completing_call.complete()
    await scheduler.stop()  # cancels before the event loop runs again: the same step
    assert task is not None and task.done()
    assert "did not stop" not in caplog.text
    await asyncio.sleep(1.2)
    assert completing_call.calls == 1  # no later tick

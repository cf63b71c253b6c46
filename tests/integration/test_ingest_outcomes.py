"""Trade outcomes joined to stored predictions: in order, out of order, duplicated, unknown, malformed.

Through the handler, the HTTP routes and the real streams (FastStream broker with the
dead-letter middleware) on PostgreSQL + Redis.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest import outcomes
from services.ingest.api import build_api
from services.ingest.metrics import IngestMetrics
from services.ingest.outcomes import OutcomeDeps, OutcomeStatus, TradeEventRejected, record_trade_event, sweep
from services.ingest.settings import IngestSettings
from services.ingest.subscribers import build_router
from shared.broker import Redis, ensure_work_groups, make_broker
from shared.db.models import Prediction, TrainingSample
from shared.db.models_ingest import TradeEvent
from shared.messages import TradeClosed, TradeExecuted, TradeOutcomeRecorded
from shared.publishing import EventPublisher
from shared.streams import Group, Stream
from shared.waiting import decode_entry

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

T0 = datetime(2026, 3, 2, 12, tzinfo=UTC)
FEATURES = np.linspace(-1, 1, 20, dtype=np.float32)
JSON = {"content-type": "application/json"}


def make_deps(sessions: async_sessionmaker[AsyncSession], redis: Redis, wait: float = 60.0) -> OutcomeDeps:
    return OutcomeDeps(sessions=sessions, publisher=EventPublisher(redis), metrics=IngestMetrics.create(None),
                       neutral_band=0.001, wait_seconds=wait)


async def add_prediction(sessions: async_sessionmaker[AsyncSession], market: str = "BTC-EUR") -> uuid.UUID:
    prediction_id = uuid.uuid4()
    async with sessions() as session, session.begin():
        session.add(Prediction(
            prediction_id=str(prediction_id), slot_key=f"xgboost:{market}:1m", version_id="v20260301_000000",
            market=market, timeframe="1m", candle_open_time=T0, action="BUY", confidence=0.75,
            predicted_return=0.004, features=FEATURES, created_at=T0,
        ))
    return prediction_id


def executed(prediction_id: uuid.UUID, **changes: Any) -> TradeExecuted:
    values: dict[str, Any] = {"prediction_id": prediction_id, "market": "BTC-EUR", "side": "BUY",
                              "entry_price": 45_000.0, "quantity": 0.1, "executed_at": T0 + timedelta(minutes=1)}
    return TradeExecuted(**(values | changes))


def closed(prediction_id: uuid.UUID, **changes: Any) -> TradeClosed:
    values: dict[str, Any] = {"prediction_id": prediction_id, "exit_price": 45_500.0,
                              "closed_at": T0 + timedelta(hours=2)}
    return TradeClosed(**(values | changes))


async def sample(sessions: async_sessionmaker[AsyncSession], prediction_id: uuid.UUID) -> TrainingSample | None:
    async with sessions() as session:
        return (await session.execute(
            select(TrainingSample).where(TrainingSample.prediction_id == str(prediction_id)))).scalar_one_or_none()


async def outcome_events(redis: Redis, prediction_id: uuid.UUID) -> list[TradeOutcomeRecorded]:
    entries = await redis.xrange(Stream.TRADE_OUTCOME_RECORDED.value)
    events = [decode_entry(Stream.TRADE_OUTCOME_RECORDED, fields) for _, fields in entries]
    return [e for e in events if isinstance(e, TradeOutcomeRecorded) and e.prediction_id == prediction_id]


async def test_execution_then_close_records_one_sample_with_seed_003_labels(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    deps = make_deps(sessions, redis)
    pid = await add_prediction(sessions)
    opened = await record_trade_event(executed(pid), deps)
    assert opened.status is OutcomeStatus.OPEN
    row = await sample(sessions, pid)
    assert row is not None and row.executed and not row.outcome_known and row.exit_price is None

    result = await record_trade_event(closed(pid), deps)
    assert result.status is OutcomeStatus.RECORDED
    row = await sample(sessions, pid)
    assert row is not None and row.outcome_known and row.target_class == "WIN"
    assert row.realized_pnl == pytest.approx(50.0) and row.target_label == pytest.approx(0.0111, abs=1e-4)
    assert (row.symbol, row.predicted_action, row.prediction_confidence, row.model_version_id) == (
        "BTC-EUR", "BUY", 0.75, "v20260301_000000")
    assert row.timestamp == T0 and row.feature_count == 20
    np.testing.assert_array_equal(row.features, FEATURES)
    [event] = await outcome_events(redis, pid)
    assert event.target_class == "WIN" and event.slot is not None and event.slot.key == "xgboost:BTC-EUR:1m"
    assert deps.metrics.outcomes_recorded._value.get() == 1


async def test_a_close_before_its_execution_waits_and_fees_count(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    deps = make_deps(sessions, redis)
    pid = await add_prediction(sessions)
    assert (await record_trade_event(closed(pid, exit_price=45_050.0, fee=3.0), deps)).status is OutcomeStatus.PENDING
    assert await sample(sessions, pid) is None
    result = await record_trade_event(executed(pid, fee=3.0), deps)
    assert result.status is OutcomeStatus.RECORDED and result.outcome is not None
    assert result.outcome.realized_pnl == pytest.approx(5.0 - 6.0)
    assert result.outcome.target_class == "NEUTRAL"  # -0.022 % is inside the 0.1 % band
    assert len(await outcome_events(redis, pid)) == 1


async def test_duplicates_are_ignored_and_a_conflicting_close_is_refused(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    deps = make_deps(sessions, redis)
    pid = await add_prediction(sessions)
    await record_trade_event(executed(pid), deps)
    close = closed(pid)
    assert (await record_trade_event(close, deps)).status is OutcomeStatus.RECORDED
    assert (await record_trade_event(close, deps)).status is OutcomeStatus.DUPLICATE  # redelivered
    assert (await record_trade_event(closed(pid), deps)).status is OutcomeStatus.DUPLICATE  # re-sent, new id
    with pytest.raises(TradeEventRejected, match="different TradeClosed"):
        await record_trade_event(closed(pid, exit_price=44_000.0), deps)
    assert len(await outcome_events(redis, pid)) == 1
    async with sessions() as session:
        assert (await session.execute(select(func.count()).select_from(TrainingSample))).scalar_one() == 1


async def test_unknown_predictions_are_waited_for_then_dead_lettered_with_a_reason(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    deps = make_deps(sessions, redis, wait=60)
    late, never = uuid.uuid4(), uuid.uuid4()
    for pid in (late, never):
        assert (await record_trade_event(executed(pid), deps)).status is OutcomeStatus.PENDING
        assert (await record_trade_event(closed(pid), deps)).status is OutcomeStatus.PENDING
    async with sessions() as session, session.begin():  # inference stores the prediction late
        session.add(Prediction(prediction_id=str(late), slot_key="xgboost:BTC-EUR:1m", version_id="v1",
                               market="BTC-EUR", timeframe="1m", candle_open_time=T0, action="SELL",
                               confidence=0.6, predicted_return=-0.01, features=FEATURES, created_at=T0))
    assert await sweep(deps) == {"recorded": 1, "published": 0, "dead": 0}
    assert (await sample(sessions, late)) is not None and len(await outcome_events(redis, late)) == 1

    assert await sweep(deps, now=datetime.now(UTC) + timedelta(seconds=61)) == {"recorded": 0, "published": 0,
                                                                                "dead": 1}
    for stream in (Stream.TRADE_EXECUTED, Stream.TRADE_CLOSED):
        letters = [f for _, f in await redis.xrange(stream.dlq) if str(never) in f[b"payload"].decode()]
        assert len(letters) == 1 and b"unknown prediction id" in letters[0][b"error"]
    assert await sample(sessions, never) is None
    assert deps.metrics.outcomes_pending._value.get() == 0


async def test_a_failure_inside_the_join_leaves_nothing_half_written(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    deps = make_deps(sessions, redis)
    pid = await add_prediction(sessions)
    await record_trade_event(executed(pid), deps)

    async def fail(*_: Any) -> None:
        raise ConnectionError("database went away mid-transaction")

    monkeypatch.setattr(outcomes, "_upsert_sample", fail)
    with pytest.raises(ConnectionError):
        await record_trade_event(closed(pid), deps)
    row = await sample(sessions, pid)
    assert row is not None and not row.outcome_known and row.exit_price is None
    async with sessions() as session:
        kinds = (await session.execute(select(TradeEvent.kind).where(TradeEvent.prediction_id == str(pid)))).all()
    assert [k for (k,) in kinds] == ["executed"]  # the close is not kept either: its redelivery retries it
    monkeypatch.undo()
    assert (await record_trade_event(closed(pid), deps)).status is OutcomeStatus.RECORDED


async def test_the_http_routes_report_trades(sessions: async_sessionmaker[AsyncSession], redis: Redis) -> None:
    deps = make_deps(sessions, redis)
    pid = await add_prediction(sessions)
    app = FastAPI()
    app.include_router(build_api(deps, ["BTC-EUR"], ["1m"], token=None))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as http:
        response = await http.post("/trades/executed", content=executed(pid).model_dump_json(), headers=JSON)
        assert response.status_code == 202 and response.json()["status"] == "open"
        response = await http.post("/trades/closed", content=closed(pid, exit_price=44_000.0).model_dump_json(), headers=JSON)
        assert response.status_code == 200
        assert response.json()["target_class"] == "LOSS" and response.json()["realized_pnl"] == pytest.approx(-100.0)
        response = await http.post("/trades/closed", json={"prediction_id": str(pid), "exit_price": -1})
        assert response.status_code == 422
        response = await http.post("/trades/closed", content=closed(pid, exit_price=1.0).model_dump_json(), headers=JSON)
        assert response.status_code == 409
        series = (await http.get("/ingest/series")).json()["series"]
        assert series[0]["market"] == "BTC-EUR"


@pytest_asyncio.fixture(loop_scope="session")
async def running_ingest(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, redis_url: str
) -> AsyncIterator[OutcomeDeps]:
    """The ingest service's trade subscribers on a real broker (dead-letter middleware included)."""
    settings = IngestSettings(redis_url=redis_url, reclaim_idle_ms=200, reclaim_poll_ms=50, max_deliveries=2)
    deps = make_deps(sessions, redis)
    await ensure_work_groups(redis, [Group.INGEST])
    broker = make_broker(settings, redis)
    broker.include_router(build_router(deps, settings))
    await broker.start()
    try:
        yield deps
    finally:
        await broker.stop()


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_trades_on_the_streams_are_joined_and_bad_ones_dead_lettered(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, running_ingest: OutcomeDeps
) -> None:
    publisher = EventPublisher(redis)
    pid = await add_prediction(sessions)
    await publisher.publish(closed(pid))  # out of order on purpose
    await publisher.publish(executed(pid))

    async def recorded() -> bool:
        row = await sample(sessions, pid)
        return row is not None and row.outcome_known

    await until(recorded)
    await until(lambda: _has_outcome(redis, pid))

    await redis.xadd(Stream.TRADE_CLOSED.value, {"__data__": b'{"prediction_id": "not-a-uuid", "exit_price": 1}'})
    await redis.xadd(Stream.TRADE_EXECUTED.value, {"__data__": b"{not json"})
    await publisher.publish(closed(pid, exit_price=1.0))  # conflicts with the recorded close

    async def dead_lettered() -> bool:
        return await redis.xlen(Stream.TRADE_CLOSED.dlq) >= 2 and await redis.xlen(Stream.TRADE_EXECUTED.dlq) >= 1

    await until(dead_lettered)
    errors = [f[b"error"].decode() for _, f in await redis.xrange(Stream.TRADE_CLOSED.dlq)]
    assert any("ValidationError" in e for e in errors) and any("different TradeClosed" in e for e in errors)
    row = await sample(sessions, pid)
    assert row is not None and row.exit_price == 45_500.0  # the refused close changed nothing
    for stream in (Stream.TRADE_CLOSED, Stream.TRADE_EXECUTED):
        pending = await redis.xpending(stream.value, Group.INGEST.value)
        assert pending["pending"] == 0


async def _has_outcome(redis: Redis, pid: uuid.UUID) -> bool:
    return len(await outcome_events(redis, pid)) == 1

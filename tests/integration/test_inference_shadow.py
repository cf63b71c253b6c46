"""Inference on real PostgreSQL and Redis: shadow challengers, champion expiry, batch acks after commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import xgboost as xgb
from faststream.redis import RedisBroker
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.inference import challengers as challengers_module
from services.inference.candle_reader import CandleReader
from services.inference.handlers import (
    InferenceMetrics,
    InferenceState,
    apply_activation,
    handle_candle,
    handle_candle_batch,
    handle_challengers_changed,
    reconcile,
)
from services.inference.settings import InferenceSettings
from services.inference.subscribers import build_router
from services.inference.windows import CandleWindows
from services.inference.writer import PredictionWriter
from services.ingest.handlers import IngestMetrics, store_and_publish
from services.ingest.sources import SyntheticSource
from services.trainer.families.xgboost import bundle
from shared.artifacts import ArtifactStore
from shared.broker import Redis, make_broker
from shared.db.models import Candle, Prediction
from shared.db.session import make_engine
from shared.messages import (
    CandleClosed,
    ChallengerRef,
    ChallengersChanged,
    Family,
    ModelActivationFailed,
    PredictionMade,
    Slot,
    utc_now,
)
from shared.ml.features import FEATURE_NAMES, LOOKBACK, feature_schema_hash, latest_features
from shared.ml.predictor import load_predictor
from shared.publishing import EventPublisher
from shared.streams import Group, Stream
from shared.waiting import decode_entry

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SLOT = Slot(family=Family.XGBOOST, market="BTC-EUR", timeframe="1m")
ANCHOR = datetime(2026, 3, 1, tzinfo=UTC)
HISTORY = LOOKBACK + 40


def _versions(store: ArtifactStore, count: int = 3) -> list[ChallengerRef]:
    """Tiny stored XGBoost versions (15 trees), different per index."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(400, len(FEATURE_NAMES))).astype(np.float32)
    refs = []
    for n in range(count):
        booster = xgb.train({"max_depth": 3, "eta": 0.3, "nthread": 1, "seed": n},
                            xgb.DMatrix(x, label=x[:, n] * 0.01 + rng.normal(0, 0.001, len(x))), 15)
        files, metadata = bundle(booster, {"decision_threshold": 0.001, "confidence_scale": 0.01})
        refs.append(ChallengerRef(version_id=f"v2026030{n + 1}_000000", artifact=store.put_bundle(files, metadata),
                                  feature_schema_hash=feature_schema_hash()))
    return refs


@pytest_asyncio.fixture(loop_scope="session")
async def candles(sessions: async_sessionmaker[AsyncSession], redis: Redis) -> list[CandleClosed]:
    """HISTORY stored 1m candles of SLOT; returns the CandleClosed events ingest published for them."""
    source = SyntheticSource(seed=5, anchor=ANCHOR, history_candles=HISTORY, wall_clock=lambda: 0.0)
    origin = source.origin_ms(60_000)
    raw = await source.fetch(SLOT.market, 60_000, origin, origin + HISTORY * 60_000)
    await store_and_publish(market=SLOT.market, timeframe=SLOT.timeframe, candles=raw, source="test",
                            sessions=sessions, publisher=EventPublisher(redis), metrics=IngestMetrics.create(None))
    events = [decode_entry(Stream.CANDLE_CLOSED, f) for _id, f in await redis.xrange(Stream.CANDLE_CLOSED.value)]
    return [e for e in events if isinstance(e, CandleClosed)]


@pytest.fixture
def refs(tmp_path: Path) -> list[ChallengerRef]:
    return _versions(ArtifactStore(tmp_path))


def _state(sessions: async_sessionmaker[AsyncSession], redis: Redis, tmp_path: Path, **settings: Any) -> InferenceState:
    return InferenceState(settings=InferenceSettings(**settings), sessions=sessions, store=ArtifactStore(tmp_path),
                          publisher=EventPublisher(redis), metrics=InferenceMetrics.create(None),
                          windows=CandleWindows(sessions))


async def _champion(state: InferenceState, ref: ChallengerRef, epoch: int = 1,
                    since: datetime | None = None) -> None:
    await apply_activation(state, slot=SLOT, version_id=ref.version_id, epoch=epoch, ref=ref.artifact,
                           schema_hash=ref.feature_schema_hash, champion_since=since)


async def _set(state: InferenceState, revision: int, refs: list[ChallengerRef]) -> None:
    await handle_challengers_changed(
        ChallengersChanged(slot=SLOT, challengers=refs, revision=revision, actor="test", reason="test"), state)


async def _predictions(redis: Redis) -> list[PredictionMade]:
    entries = await redis.xrange(Stream.PREDICTION_MADE.value)
    return [e for e in (decode_entry(Stream.PREDICTION_MADE, f) for _id, f in entries) if isinstance(e, PredictionMade)]


async def _rows(sessions: async_sessionmaker[AsyncSession]) -> list[Prediction]:
    async with sessions() as session:
        return list((await session.execute(select(Prediction))).scalars().all())


def _value(metric: Any, **labels: str) -> float:
    return float(metric.labels(**labels)._value.get()) if labels else float(metric._value.get())


async def test_challengers_predict_in_shadow_after_the_champion_and_never_change_it(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, tmp_path: Path, candles: list[CandleClosed],
    refs: list[ChallengerRef],
) -> None:
    """Given a champion and two challengers, when candles close, then each gets one champion prediction
    (published first, numbers as if no challenger existed) and one shadow prediction per challenger;
    all are stored with their shadow flag. Removing the challengers stops the shadows."""
    state = _state(sessions, redis, tmp_path)
    await _champion(state, refs[0])
    await _set(state, 1, refs[1:])
    assert _value(state.metrics.challengers, slot=SLOT.key) == 2

    for candle in candles[-5:]:
        assert await handle_candle(candle, state) == 1

    events = await _predictions(redis)
    champion = [e for e in events if not e.shadow]
    shadow = [e for e in events if e.shadow]
    assert [e.version_id for e in champion] == [refs[0].version_id] * 5
    assert sorted(e.version_id for e in shadow) == sorted([refs[1].version_id, refs[2].version_id] * 5)
    for candle in candles[-5:]:
        order = [(e.shadow, e.version_id) for e in events if e.candle_event_id == candle.event_id]
        assert order[0] == (False, refs[0].version_id) and len(order) == 3  # champion first
    predictor = load_predictor(ArtifactStore(tmp_path), refs[0].artifact)
    async with sessions() as session:
        history = (await session.execute(select(Candle.open, Candle.high, Candle.low, Candle.close, Candle.volume)
                                         .order_by(Candle.open_time))).all()
    ohlcv = np.array(history, dtype=np.float64)
    for event, end in zip(champion, range(len(history) - 5, len(history)), strict=True):
        expected = predictor.predict(latest_features(ohlcv[: end + 1]).reshape(1, -1))[0]
        assert (event.action, event.confidence, event.predicted_return) == (
            expected.action, expected.confidence, expected.score)
    rows = await _rows(sessions)
    assert sorted((r.shadow, r.version_id) for r in rows) == sorted(
        [(False, refs[0].version_id)] * 5 + [(True, refs[1].version_id)] * 5 + [(True, refs[2].version_id)] * 5)
    assert _value(state.metrics.shadow_predictions, slot=SLOT.key, version=refs[1].version_id) == 5

    await _set(state, 2, [])
    await _set(state, 1, refs[1:])  # a replayed older revision changes nothing
    assert state.slots[SLOT.key].challengers == {}
    assert _value(state.metrics.challengers, slot=SLOT.key) == 0
    await handle_candle(candles[-6], state)
    assert [e.shadow for e in (await _predictions(redis))[len(events):]] == [False]


async def test_predictions_of_a_champion_older_than_the_expiry_are_stale(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, tmp_path: Path, candles: list[CandleClosed],
    refs: list[ChallengerRef],
) -> None:
    state = _state(sessions, redis, tmp_path, champion_max_age_hours=1.0)
    await _champion(state, refs[0], since=utc_now() - timedelta(hours=2))
    await _set(state, 1, refs[1:2])
    await handle_candle(candles[-2], state)
    await _champion(state, refs[2], epoch=2)  # a fresh activation (now)
    await handle_candle(candles[-1], state)
    flags = [(e.version_id, e.shadow, e.stale) for e in await _predictions(redis)]
    assert flags == [(refs[0].version_id, False, True), (refs[1].version_id, True, False),
                     (refs[2].version_id, False, False), (refs[1].version_id, True, False)]
    assert _value(state.metrics.stale_predictions, slot=SLOT.key, version=refs[0].version_id) == 1

    unlimited = _state(sessions, redis, tmp_path)  # expiry off: never stale
    await _champion(unlimited, refs[0], since=utc_now() - timedelta(days=400))
    await handle_candle(candles[-3], unlimited)
    assert not (await _predictions(redis))[-1].stale


async def test_a_challenger_that_fails_to_load_is_reported_and_serving_goes_on(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, tmp_path: Path, candles: list[CandleClosed],
    refs: list[ChallengerRef],
) -> None:
    state = _state(sessions, redis, tmp_path)
    await _champion(state, refs[0])
    broken = refs[2].model_copy(update={"artifact": refs[2].artifact.model_copy(update={"sha256": "0" * 64})})
    await _set(state, 1, [broken, refs[1]])
    failures = [e for _id, f in await redis.xrange(Stream.MODEL_ACTIVATION_FAILED.value)
                if isinstance(e := decode_entry(Stream.MODEL_ACTIVATION_FAILED, f), ModelActivationFailed)]
    assert [(f.version_id, f.kept_version_id, f.epoch) for f in failures] == [
        (broken.version_id, refs[0].version_id, 1)]
    assert "sha256" in failures[0].error
    assert list(state.slots[SLOT.key].challengers) == [refs[1].version_id]
    assert _value(state.metrics.challenger_failures, slot=SLOT.key) == 1
    assert await handle_candle(candles[-1], state) == 1
    assert [(e.version_id, e.shadow) for e in await _predictions(redis)] == [
        (refs[0].version_id, False), (refs[1].version_id, True)]


async def test_challengers_are_reconciled_from_the_newest_event_per_slot(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, tmp_path: Path, refs: list[ChallengerRef],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given several ChallengersChanged on the stream, a replica starting later serves the newest set of
    each slot (the stream is read newest-first, page by page)."""
    other = Slot(family=Family.XGBOOST, market="ETH-EUR", timeframe="1m")
    publisher = EventPublisher(redis)
    for slot, revision, members in ((SLOT, 1, refs[1:]), (other, 1, refs[:1]), (SLOT, 2, refs[2:]),
                                    (other, 2, refs[:2]), (other, 3, refs[1:2]), (SLOT, 3, []),
                                    (SLOT, 4, refs[1:2])):
        await publisher.publish(ChallengersChanged(slot=slot, challengers=members, revision=revision, actor="t",
                                                   reason="t"))
    await redis.xadd(Stream.CHALLENGERS_CHANGED.value, {"__data__": b"not json"})
    monkeypatch.setattr(challengers_module, "SCAN_PAGE", 2)
    state = _state(sessions, redis, tmp_path)
    await reconcile(state, challengers=True)
    assert {key: (s.revision, list(s.challengers)) for key, s in state.slots.items()} == {
        SLOT.key: (4, [refs[1].version_id]), other.key: (3, [refs[1].version_id])}


async def test_the_writer_acks_a_batch_only_after_its_rows_are_committed(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, tmp_path: Path, candles: list[CandleClosed],
    refs: list[ChallengerRef], engine: AsyncEngine, database_url: str,
) -> None:
    stream, group = Stream.CANDLE_CLOSED.value, Group.INFERENCE.value
    entries: Any = await redis.xrange(stream)
    await redis.xgroup_create(stream, group, id=entries[-7][0])  # read the newest six candles, three at a time
    state = _state(sessions, redis, tmp_path)
    await _champion(state, refs[0])
    await _set(state, 1, refs[1:2])
    broken_engine = make_engine(make_url(database_url).set(database="tradeloop_no_such_db").render_as_string(
        hide_password=False))
    try:
        for writer_engine, stored in ((broken_engine, False), (engine, True)):
            reply: Any = await redis.xreadgroup(group, "test-consumer", {stream: ">"}, count=3)
            entry_ids = [entry_id for entry_id, _fields in reply[0][1]]
            batch = [e for _i, f in reply[0][1] if isinstance(e := decode_entry(Stream.CANDLE_CLOSED, f), CandleClosed)]
            writer = PredictionWriter(state, redis, writer_engine, stream=stream, group=group, linger=0.01)
            await writer.start()
            state.writer = writer
            work = await handle_candle_batch(batch, state, entry_ids=entry_ids, ack=_never)
            assert work.champion_predictions == 3  # published before anything is stored
            await writer.drain()
            await writer.close()
            pending: Any = await redis.xpending_range(stream, group, min="-", max="+", count=100)
            pending_ids = {p["message_id"] for p in pending}
            if stored:
                assert not pending_ids & set(entry_ids)
            else:
                assert set(entry_ids) <= pending_ids  # nothing stored → nothing acked
                assert _value(state.metrics.write_failures) == 1
        rows = await _rows(sessions)
        assert sorted(r.shadow for r in rows) == [False, False, False, True, True, True]
    finally:
        await broken_engine.dispose()


async def _never() -> None:
    raise AssertionError("with a writer, the writer acks")


@dataclass
class Serving:
    """What inference's composition root starts: the broker (reclaimer, broadcasts) and the candle reader."""

    state: InferenceState
    broker: RedisBroker
    reader: CandleReader

    async def start(self) -> None:
        await self.broker.start()
        await self.reader.start()


@pytest_asyncio.fixture(loop_scope="session")
async def inference_broker(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, redis_url: str, tmp_path: Path, engine: AsyncEngine,
) -> AsyncIterator[Serving]:
    """An inference state, its broker (reclaimer, broadcast subscribers) and candle reader, not started yet."""
    state = InferenceState(settings=InferenceSettings(redis_url=redis_url, consumer="inference-test",
                                                      reclaim_idle_ms=300, reclaim_poll_ms=50),
                           sessions=sessions, store=ArtifactStore(tmp_path), publisher=EventPublisher(redis),
                           metrics=InferenceMetrics.create(None), windows=CandleWindows(sessions))
    writer = PredictionWriter(state, redis, engine, stream=Stream.CANDLE_CLOSED.value, group=Group.INFERENCE.value,
                              linger=0.01)
    state.writer = writer
    broker = make_broker(state.settings, redis)
    broker.include_router(build_router(state))
    reader = CandleReader(redis, state, stream=Stream.CANDLE_CLOSED.value, group=Group.INFERENCE.value,
                          consumer=state.settings.consumer_name, batch=state.settings.candle_batch_size, block_ms=100)
    await writer.start()
    try:
        yield Serving(state, broker, reader)
    finally:
        await reader.stop()
        await broker.stop()
        await writer.close()


async def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_failing_challenger_costs_only_its_own_shadow_predictions(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, tmp_path: Path, candles: list[CandleClosed],
    refs: list[ChallengerRef], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given two challengers of which one raises when predicting, the champion and the other challenger
    still predict, publish and store every candle; the failing one adds nothing."""
    state = _state(sessions, redis, tmp_path)
    await _champion(state, refs[0])
    await _set(state, 1, refs[1:])
    broken = state.slots[SLOT.key].challengers[refs[1].version_id].predictor

    def fail(_features: np.ndarray) -> list[Any]:
        raise RuntimeError("challenger broke")

    monkeypatch.setattr(broken, "predict", fail)
    for candle in candles[-3:]:
        assert await handle_candle(candle, state) == 1
    events = await _predictions(redis)
    assert sorted((e.shadow, e.version_id) for e in events) == sorted(
        [(False, refs[0].version_id)] * 3 + [(True, refs[2].version_id)] * 3)
    assert sorted((r.shadow, r.version_id) for r in await _rows(sessions)) == sorted(
        [(False, refs[0].version_id)] * 3 + [(True, refs[2].version_id)] * 3)


async def test_the_subscriber_predicts_batches_and_dead_letters_invalid_entries(
    redis: Redis, tmp_path: Path, candles: list[CandleClosed], inference_broker: Serving,
) -> None:
    """Given a champion and a challenger announced on the stream, when candles and one invalid entry
    arrive, then every candle gets both predictions, the invalid entry is dead-lettered, nothing stays
    pending."""
    state = inference_broker.state
    refs = _versions(state.store)
    stream, group = Stream.CANDLE_CLOSED.value, Group.INFERENCE.value
    await redis.xgroup_create(stream, group, id="$", mkstream=True)  # skip the candles ingest published
    await _champion(state, refs[0])
    await inference_broker.start()
    await asyncio.sleep(0.3)  # the broadcast subscriber reads from "$": let it start reading
    await EventPublisher(redis).publish(ChallengersChanged(slot=SLOT, challengers=refs[1:2], revision=1, actor="t",
                                                           reason="t"))

    async def loaded() -> bool:
        return bool(state.slots[SLOT.key].challengers)

    await _until(loaded)
    for candle in candles[-5:-2]:
        await redis.xadd(stream, {"__data__": candle.model_dump_json()})
    await redis.xadd(stream, {"__data__": b'{"market": "BTC-EUR"}'})
    for candle in candles[-2:]:
        await redis.xadd(stream, {"__data__": candle.model_dump_json()})

    async def drained() -> bool:
        groups: Any = await redis.xinfo_groups(stream)
        info = next(g for g in groups if g["name"] in (group, group.encode()))
        return int(info["pending"]) == 0 and int(info.get("lag") or 0) == 0

    await _until(drained)
    await state.writer.drain() if state.writer else None
    events = await _predictions(redis)
    wanted = {c.event_id for c in candles[-5:]}
    assert {e.candle_event_id for e in events if not e.shadow} == wanted
    assert {e.candle_event_id for e in events if e.shadow} == wanted
    dead = await redis.xrange(Stream.CANDLE_CLOSED.dlq)
    assert len(dead) == 1 and b"ValidationError" in dead[0][1][b"error"]


async def test_the_reclaimer_finishes_candles_a_dead_consumer_left_pending(
    redis: Redis, sessions: async_sessionmaker[AsyncSession], candles: list[CandleClosed],
    inference_broker: Serving,
) -> None:
    """Given candles read by a consumer that died before acking, the reclaimer predicts, stores and acks
    them one by one once they are idle long enough."""
    state = inference_broker.state
    refs = _versions(state.store)
    stream, group = Stream.CANDLE_CLOSED.value, Group.INFERENCE.value
    await redis.xgroup_create(stream, group, id="$", mkstream=True)
    for candle in candles[-3:]:
        await redis.xadd(stream, {"__data__": candle.model_dump_json()})
    dead: Any = await redis.xreadgroup(group, "inference-dead-consumer", {stream: ">"}, count=10)
    assert len(dead[0][1]) == 3
    await _champion(state, refs[0])
    await inference_broker.start()

    async def done() -> bool:
        pending: Any = await redis.xpending(stream, group)
        return int(pending["pending"]) == 0

    await _until(done)
    assert {e.candle_event_id for e in await _predictions(redis)} == {c.event_id for c in candles[-3:]}
    assert len(await _rows(sessions)) == 3


async def test_a_batch_that_fails_stays_pending_and_reading_goes_on(
    redis: Redis, sessions: async_sessionmaker[AsyncSession], candles: list[CandleClosed], inference_broker: Serving,
) -> None:
    """Given the writer down when the first candles are read, their batch fails and stays pending (nothing
    published is lost: the reclaimer redoes them once the writer is back), and later candles are read."""
    state = inference_broker.state
    assert state.writer is not None
    await _champion(state, _versions(state.store)[0])
    stream, group = Stream.CANDLE_CLOSED.value, Group.INFERENCE.value
    await redis.xgroup_create(stream, group, id="$", mkstream=True)
    await state.writer.close()  # submit() now raises: the batch handler fails
    await inference_broker.start()
    for candle in candles[-4:-2]:
        await redis.xadd(stream, {"__data__": candle.model_dump_json()})

    async def read_but_pending() -> bool:
        pending: Any = await redis.xpending(stream, group)
        return int(pending["pending"]) == 2

    await _until(read_but_pending)
    await state.writer.start()
    for candle in candles[-2:]:
        await redis.xadd(stream, {"__data__": candle.model_dump_json()})

    async def done() -> bool:
        pending: Any = await redis.xpending(stream, group)
        return int(pending["pending"]) == 0 and len(await _rows(sessions)) == 4

    await _until(done)
    assert {e.candle_event_id for e in await _predictions(redis)} == {c.event_id for c in candles[-4:]}


async def test_a_dropped_reader_connection_is_reopened_and_no_candle_is_lost(
    redis: Redis, sessions: async_sessionmaker[AsyncSession], candles: list[CandleClosed], inference_broker: Serving,
) -> None:
    """Given the reader blocked in XREADGROUP on its own connection, when Redis drops that connection, the
    reader logs, reconnects and goes on: candles before and after are predicted, stored and acked."""
    state = inference_broker.state
    await _champion(state, _versions(state.store)[0])
    stream, group = Stream.CANDLE_CLOSED.value, Group.INFERENCE.value
    await redis.xgroup_create(stream, group, id="$", mkstream=True)
    await inference_broker.start()
    for candle in candles[-4:-2]:
        await redis.xadd(stream, {"__data__": candle.model_dump_json()})

    async def stored(count: int) -> bool:
        pending: Any = await redis.xpending(stream, group)
        return int(pending["pending"]) == 0 and len(await _rows(sessions)) == count

    await _until(lambda: stored(2))

    async def blocked_reader() -> int | None:
        clients: Any = await redis.client_list()
        return next((int(c["id"]) for c in clients if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")),
                    None)

    async def reader_blocked() -> bool:
        return await blocked_reader() is not None

    await _until(reader_blocked)
    killed = await blocked_reader()
    assert killed is not None
    await redis.client_kill_filter(_id=killed)
    for candle in candles[-2:]:
        await redis.xadd(stream, {"__data__": candle.model_dump_json()})
    await _until(lambda: stored(4))
    assert {e.candle_event_id for e in await _predictions(redis)} == {c.event_id for c in candles[-4:]}
    assert await blocked_reader() not in (None, killed)

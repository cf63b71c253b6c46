"""The services' handlers on real PostgreSQL and Redis: ingest → trainer → registry → inference."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.inference.handlers import (
    InferenceMetrics,
    InferenceState,
    apply_activation,
    handle_candle,
    reconcile,
)
from services.inference.settings import InferenceSettings
from services.inference.windows import CandleWindows
from services.ingest.handlers import IngestMetrics, store_and_publish
from services.ingest.sources import SyntheticSource
from services.ingest.validation import RawCandle
from services.registry.handlers import RegistryDeps, RegistryMetrics, handle_activate, handle_model_trained
from services.registry.promotion import judge_new_version
from services.registry.settings import RegistrySettings
from services.trainer.handlers import TrainerDeps, TrainerMetrics, handle_retrain
from services.trainer.settings import TrainerSettings
from shared.artifacts import ArtifactStore
from shared.broker import Redis
from shared.db.models import ActivationHistory, Candle, Prediction, SlotChampion, TrainingSample
from shared.messages import (
    ActivateModel,
    ActivationRejected,
    CandleClosed,
    Family,
    ModelActivated,
    ModelActivationFailed,
    ModelTrained,
    PredictionMade,
    RetrainErrorCode,
    RetrainFailed,
    RetrainModel,
    RetrainOverrides,
    Slot,
)
from shared.publishing import EventPublisher
from shared.streams import Stream
from shared.waiting import decode_entry

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SLOT = Slot(family=Family.XGBOOST, market="BTC-EUR", timeframe="1m")
ANCHOR = datetime(2026, 3, 1, tzinfo=UTC)
TOKEN = "integration-test-token-0123456789"


async def _events(redis: Redis, stream: Stream) -> list[object]:
    return [decode_entry(stream, fields) for _id, fields in await redis.xrange(stream.value)]


async def _ingest(sessions: async_sessionmaker[AsyncSession], redis: Redis, candles: list[RawCandle]) -> None:
    await store_and_publish(market=SLOT.market, timeframe=SLOT.timeframe, candles=candles, source="test",
                            sessions=sessions, publisher=EventPublisher(redis), metrics=IngestMetrics.create(None))


async def _synthetic(n: int) -> list[RawCandle]:
    source = SyntheticSource(seed=3, anchor=ANCHOR, history_candles=n, wall_clock=lambda: 0.0)
    origin = source.origin_ms(60_000)
    return await source.fetch(SLOT.market, 60_000, origin, origin + n * 60_000)


async def test_timestamps_and_feature_vectors_round_trip(sessions: async_sessionmaker[AsyncSession]) -> None:
    vector = np.arange(5, dtype=np.float32) / 3
    aware = datetime.fromisoformat("2026-05-01T12:00:00+02:00")
    async with sessions() as session, session.begin():
        session.add(TrainingSample(symbol="BTC-EUR", timestamp=aware, predicted_action="BUY",
                                   prediction_confidence=0.7, features=vector, feature_count=5))
    async with sessions() as session:
        row = (await session.execute(select(TrainingSample))).scalar_one()
    assert row.timestamp == datetime(2026, 5, 1, 10, tzinfo=UTC)
    np.testing.assert_array_equal(row.features, vector)
    with pytest.raises(Exception, match="naive"):
        async with sessions() as session, session.begin():
            session.add(TrainingSample(symbol="X-EUR", timestamp=datetime(2026, 1, 1), predicted_action="BUY",
                                       prediction_confidence=0.5, features=vector, feature_count=5))


async def test_ingest_stores_and_publishes_each_candle_once_across_reruns(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    candles = await _synthetic(300)
    bad = RawCandle(candles[-1].open_time_ms + 60_000, 10, 9, 8, 9.5, 1)
    await _ingest(sessions, redis, [*candles[:200], bad])
    await _ingest(sessions, redis, candles)  # a rerun after a crash overlaps the first batch
    async with sessions() as session:
        stored = (await session.execute(select(func.count()).select_from(Candle))).scalar_one()
    assert stored == 300
    events = await _events(redis, Stream.CANDLE_CLOSED)
    assert len(events) == 300
    assert len({e.open_time for e in events if isinstance(e, CandleClosed)}) == 300


def _trainer(sessions: async_sessionmaker[AsyncSession], redis: Redis, artifacts: Path) -> TrainerDeps:
    return TrainerDeps(settings=TrainerSettings(num_boost_round=30), sessions=sessions, store=ArtifactStore(artifacts),
                       publisher=EventPublisher(redis), metrics=TrainerMetrics.create(None))


def _registry(sessions: async_sessionmaker[AsyncSession], redis: Redis, artifacts: Path) -> RegistryDeps:
    return RegistryDeps(settings=RegistrySettings(admin_token=TOKEN), sessions=sessions,
                        store=ArtifactStore(artifacts), publisher=EventPublisher(redis),
                        metrics=RegistryMetrics.create(None))


async def _train(deps: TrainerDeps, redis: Redis, key: str) -> ModelTrained:
    before = len(await _events(redis, Stream.MODEL_TRAINED))
    await handle_retrain(RetrainModel(slot=SLOT, requested_by="test"), key=key, deps=deps)
    events = await _events(redis, Stream.MODEL_TRAINED)
    assert len(events) == before + 1
    event = events[-1]
    assert isinstance(event, ModelTrained)
    return event


async def test_retrain_register_activate_predict(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, tmp_path: Path
) -> None:
    """The loop through the handlers: every later prediction carries the activated version."""
    await _ingest(sessions, redis, await _synthetic(1200))
    trainer, registry = _trainer(sessions, redis, tmp_path), _registry(sessions, redis, tmp_path)

    trained = await _train(trainer, redis, "key-1")
    assert trained.version_id.startswith("v") and trained.lineage["bootstrap"] is True
    await _train(trainer, redis, "key-1")  # same idempotency key → the same version is re-announced
    assert {e.version_id for e in await _events(redis, Stream.MODEL_TRAINED)} == {trained.version_id}

    recorded = await handle_model_trained(trained, registry)
    assert recorded is not None
    assert await judge_new_version(registry, recorded) is None  # manual policy: never auto-activated
    activated = await handle_activate(ActivateModel(version_id=trained.version_id, requested_by="test"), registry)
    assert isinstance(activated, ModelActivated) and activated.epoch == 1

    state = InferenceState(settings=InferenceSettings(), sessions=sessions, store=ArtifactStore(tmp_path),
                           publisher=EventPublisher(redis), metrics=InferenceMetrics.create(None),
                           windows=CandleWindows(sessions))
    await apply_activation(state, slot=activated.slot, version_id=activated.version_id, epoch=activated.epoch,
                           ref=activated.artifact, schema_hash=activated.feature_schema_hash)
    candles = await _events(redis, Stream.CANDLE_CLOSED)
    for candle in candles[-5:]:
        assert isinstance(candle, CandleClosed)
        assert await handle_candle(candle, state) == 1
    predictions = [e for e in await _events(redis, Stream.PREDICTION_MADE) if isinstance(e, PredictionMade)]
    assert len(predictions) == 5 and {p.version_id for p in predictions} == {trained.version_id}
    async with sessions() as session:
        stored = (await session.execute(select(Prediction))).scalars().all()
    assert len(stored) == 5 and all(p.features.shape == (20,) for p in stored)

    # a replica started later reads the champion from the database
    fresh = InferenceState(settings=InferenceSettings(), sessions=sessions, store=ArtifactStore(tmp_path),
                           publisher=EventPublisher(redis), metrics=InferenceMetrics.create(None),
                           windows=CandleWindows(sessions))
    await reconcile(fresh)
    assert fresh.slots[SLOT.key].current is not None
    assert (fresh.slots[SLOT.key].current.version_id, fresh.slots[SLOT.key].epoch) == (trained.version_id, 1)

    # a stale or replayed activation changes nothing
    await apply_activation(state, slot=activated.slot, version_id="v-old", epoch=1, ref=activated.artifact,
                           schema_hash=activated.feature_schema_hash)
    assert state.slots[SLOT.key].current is not None
    assert state.slots[SLOT.key].current.version_id == trained.version_id


async def test_registry_refuses_unknown_and_tampered_versions(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, tmp_path: Path
) -> None:
    await _ingest(sessions, redis, await _synthetic(800))
    registry = _registry(sessions, redis, tmp_path)
    trained = await _train(_trainer(sessions, redis, tmp_path), redis, "key-tamper")
    await handle_model_trained(trained, registry)

    assert await handle_activate(ActivateModel(version_id="v20990101_000000"), registry) is None
    manifest = tmp_path / trained.artifact.path
    model_file = next(p for p in tmp_path.rglob("*.ubj"))
    model_file.write_bytes(b"tampered")
    assert manifest.exists()
    assert await handle_activate(ActivateModel(version_id=trained.version_id), registry) is None
    rejections = [e for e in await _events(redis, Stream.ACTIVATION_REJECTED) if isinstance(e, ActivationRejected)]
    assert [("unknown version" in r.reason, "sha256 mismatch" in r.reason) for r in rejections] == [
        (True, False), (False, True)]
    async with sessions() as session:
        assert (await session.execute(select(func.count()).select_from(SlotChampion))).scalar_one() == 0


async def test_concurrent_activations_leave_one_champion_and_one_history_chain(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, tmp_path: Path
) -> None:
    await _ingest(sessions, redis, await _synthetic(800))
    trainer, registry = _trainer(sessions, redis, tmp_path), _registry(sessions, redis, tmp_path)
    versions = []
    for n in range(3):
        trained = await _train(trainer, redis, f"key-c{n}")
        await handle_model_trained(trained, registry)
        versions.append(trained.version_id)
    commands = [ActivateModel(version_id=versions[n % 3]) for n in range(9)]
    results = await asyncio.gather(*(handle_activate(c, registry) for c in commands))
    assert all(isinstance(r, ModelActivated) for r in results)
    async with sessions() as session:
        history = (await session.execute(select(ActivationHistory).order_by(ActivationHistory.epoch))).scalars().all()
        champion = (await session.execute(select(SlotChampion))).scalar_one()
    assert [h.epoch for h in history] == list(range(1, 10))
    assert all(h.from_version_id == prev.to_version_id for prev, h in itertools.pairwise(history))
    assert champion.epoch == 9 and champion.version_id == history[-1].to_version_id


async def test_failed_load_keeps_the_old_model(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, tmp_path: Path
) -> None:
    await _ingest(sessions, redis, await _synthetic(800))
    trained = await _train(_trainer(sessions, redis, tmp_path), redis, "key-keep")
    state = InferenceState(settings=InferenceSettings(), sessions=sessions, store=ArtifactStore(tmp_path),
                           publisher=EventPublisher(redis), metrics=InferenceMetrics.create(None),
                           windows=CandleWindows(sessions))
    await apply_activation(state, slot=SLOT, version_id=trained.version_id, epoch=1, ref=trained.artifact,
                           schema_hash=trained.feature_schema_hash)
    broken = trained.artifact.model_copy(update={"sha256": "0" * 64})
    await apply_activation(state, slot=SLOT, version_id="v-broken", epoch=2, ref=broken,
                           schema_hash=trained.feature_schema_hash)
    served = state.slots[SLOT.key].current
    assert served is not None and served.version_id == trained.version_id
    failures = [e for e in await _events(redis, Stream.MODEL_ACTIVATION_FAILED)
                if isinstance(e, ModelActivationFailed)]
    assert len(failures) == 1 and failures[0].kept_version_id == trained.version_id


async def test_retrain_with_too_little_data_publishes_the_seed_error_code(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, tmp_path: Path
) -> None:
    await _ingest(sessions, redis, await _synthetic(300))
    deps = _trainer(sessions, redis, tmp_path)
    await handle_retrain(RetrainModel(slot=SLOT, overrides=RetrainOverrides(min_samples=5000)), key="k", deps=deps)
    failures = [e for e in await _events(redis, Stream.RETRAIN_FAILED) if isinstance(e, RetrainFailed)]
    assert [f.error_code for f in failures] == [RetrainErrorCode.INSUFFICIENT_SAMPLES]
    assert await redis.xlen(Stream.MODEL_TRAINED.value) == 0


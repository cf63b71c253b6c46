"""The trainer at full depth on real Redis and PostgreSQL: both families from command to ModelTrained,
seed 003's error codes on closed-trade outcomes, a 100-feature schema, coalescing, and the scheduler."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.trainer.families.base import FitResult, Report
from services.trainer.families.xgboost_family import XGBoostFamily
from services.trainer.feature_schemas import make_schema, register_feature_schema, serving_schema
from services.trainer.handlers import TrainerDeps, TrainerMetrics, handle_retrain
from services.trainer.main import build
from services.trainer.scheduler import RetrainScheduler, schedule_key
from services.trainer.settings import TrainerSettings
from services.trainer.slot_leases import holder_of
from shared.artifacts import ArtifactStore
from shared.broker import Redis
from shared.db.models import Candle, RetrainRun, TrainingSample
from shared.messages import (
    Family,
    Message,
    ModelTrained,
    RetrainErrorCode,
    RetrainFailed,
    RetrainModel,
    RetrainOverrides,
    RetrainProgress,
    Slot,
)
from shared.ml.predictor import load_predictor
from shared.publishing import EventPublisher
from shared.streams import Stream
from shared.waiting import decode_entry, tail_ids, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

XGB = Slot(family=Family.XGBOOST, market="BTC-EUR", timeframe="1h")
CNN = Slot(family=Family.CNN, market="ETH-EUR", timeframe="1h", pattern="bullFlag")
CNN_OVERRIDES = RetrainOverrides(window_days=120, sequence_length=20, num_epochs=2, batch_size=64,
                                 perform_cross_validation=True, cv_num_splits=2, perform_backtesting=True)


async def _events(redis: Redis, stream: Stream) -> list[Message]:
    return [decode_entry(stream, fields) for _id, fields in await redis.xrange(stream.value)]


async def _insert_candles(sessions: async_sessionmaker[AsyncSession], slot: Slot, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.004, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.004, n)))
    newest = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    rows = [
        {"market": slot.market, "timeframe": slot.timeframe, "open_time": newest - timedelta(hours=n - 1 - i),
         "open": float(open_[i]), "high": float(high[i]), "low": float(low[i]), "close": float(close[i]),
         "volume": float(rng.lognormal(3, 0.5)), "source": "test"}
        for i in range(n)
    ]
    async with sessions() as session, session.begin():
        await session.execute(Candle.__table__.insert(), rows)


async def _insert_outcomes(
    sessions: async_sessionmaker[AsyncSession], n: int, *, width: int = 20, schema_hash: str | None = None,
    seed: int = 1, start: datetime | None = None,
) -> None:
    """Closed trades of XGB's market: overlapping holding periods, label driven by feature 0."""
    rng = np.random.default_rng(seed)
    first = start or datetime.now(UTC) - timedelta(days=20)
    rows = []
    for i in range(n):
        features = rng.normal(size=width).astype(np.float32)
        entry = first + timedelta(hours=2 * i)
        rows.append({
            "symbol": XGB.market, "timeframe": XGB.timeframe, "timestamp": entry, "predicted_action": "BUY",
            "prediction_confidence": 0.6, "features": features, "feature_count": width,
            "feature_schema_hash": schema_hash or serving_schema().hash, "executed": True, "execution_side": "BUY",
            "entry_price": 100.0, "entry_time": entry, "exit_time": entry + timedelta(hours=int(rng.integers(1, 6))),
            "target_label": float(0.01 * features[0] + rng.normal(0, 0.002)), "outcome_known": True,
        })
    async with sessions() as session, session.begin():
        await session.execute(TrainingSample.__table__.insert(), rows)


def _deps(sessions: async_sessionmaker[AsyncSession], redis: Redis, root: Path, **settings: Any) -> TrainerDeps:
    return TrainerDeps(TrainerSettings(consumer="trainer-test", **settings), sessions, ArtifactStore(root),
                       EventPublisher(redis), TrainerMetrics.create(None))


async def _run_until(
    redis: Redis, command: RetrainModel, send: Callable[[RetrainModel], Awaitable[object]], timeout: float = 60
) -> Message:
    after = await tail_ids(redis, [Stream.MODEL_TRAINED, Stream.RETRAIN_FAILED])
    await send(command)
    answer = await wait_for(redis, [Stream.MODEL_TRAINED, Stream.RETRAIN_FAILED],
                            lambda m: getattr(m, "run_id", None) is not None, after=after, timeout=timeout)
    assert answer is not None, "no answer from the trainer"
    return answer


async def test_both_families_from_command_to_model_trained(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """The trainer service (subscriber → handler → families) answers each family's command with a version."""
    await _insert_outcomes(sessions, 180)
    await _insert_candles(sessions, CNN, 1500)
    settings = TrainerSettings(redis_url=redis_url, database_url=database_url, data_dir=tmp_path,
                               consumer="trainer-inproc", retrain_enabled=False, num_boost_round=30)
    runtime = build(settings)
    await runtime.app.start()
    try:
        publisher = EventPublisher(redis)
        xgb = await _run_until(redis, RetrainModel(slot=XGB, requested_by="test"), publisher.publish)
        cnn = await _run_until(redis, RetrainModel(slot=CNN, overrides=CNN_OVERRIDES, requested_by="test"),
                               publisher.publish)
    finally:
        await runtime.app.stop()
        for hook in runtime.on_stop:
            await hook()
    assert isinstance(xgb, ModelTrained) and isinstance(cnn, ModelTrained), (xgb, cnn)
    store = ArtifactStore(tmp_path / "artifacts")

    assert xgb.lineage["source"] == "trade_outcomes" and xgb.lineage["bootstrap"] is False
    assert xgb.feature_schema_hash == serving_schema().hash
    assert xgb.lineage["samples_total"] == 180 and xgb.training_samples + xgb.validation_samples <= 180
    assert {"train_accuracy", "validation_accuracy", "train_mae", "validation_mae"} <= set(xgb.metrics)
    for part in ("rows_fingerprint", "window", "seeds", "libraries", "code", "purge", "requested_by"):
        assert part in xgb.lineage, part
    load_predictor(store, xgb.artifact, expected_schema_hash=xgb.feature_schema_hash)

    assert cnn.model_type == "cnn_pattern" and cnn.slot.pattern == "bullFlag"
    for name in ("accuracy", "precision", "recall", "f1", "auc"):
        assert f"cv_mean_{name}" in cnn.metrics and f"cv_fold1_{name}" in cnn.metrics and f"cv_fold2_{name}" in cnn.metrics
    for name in ("number_of_trades", "win_rate", "total_return", "sharpe_per_trade", "max_drawdown", "profit_factor"):
        assert f"backtest_{name}" in cnn.metrics
    assert len(cnn.lineage["cross_validation"]) == 2 and cnn.lineage["backtest"]["performed"] is True
    periods = cnn.lineage["periods"]
    assert periods["train"][1] < periods["validation"][0] < periods["test"][0]
    assert cnn.lineage["backtest"]["period"][0] >= periods["test"][0]
    load_predictor(store, cnn.artifact, expected_schema_hash=cnn.feature_schema_hash)

    progress = [e for e in await _events(redis, Stream.RETRAIN_PROGRESS)
                if isinstance(e, RetrainProgress) and e.run_id == cnn.run_id]
    stages = [e.stage for e in progress]
    assert stages[0] == "loading" and stages[-1] == "trained" and stages.count("epoch") >= 1
    assert [e.detail["epoch"] for e in progress if e.stage == "epoch"] == list(range(1, stages.count("epoch") + 1))
    assert "cross_validation" in stages and "backtesting" in stages and "saving" in stages


async def test_same_command_on_same_data_gives_the_same_metrics_and_no_activation(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, tmp_path: Path
) -> None:
    await _insert_outcomes(sessions, 150)
    deps = _deps(sessions, redis, tmp_path, num_boost_round=25)
    command = RetrainModel(slot=XGB, requested_by="test")
    await handle_retrain(command, key="same-1", deps=deps)
    await handle_retrain(command, key="same-2", deps=deps)
    first, second = [e for e in await _events(redis, Stream.MODEL_TRAINED) if isinstance(e, ModelTrained)]
    assert first.version_id != second.version_id
    assert first.metrics == second.metrics and first.artifact.sha256 == second.artifact.sha256
    assert first.lineage["rows_fingerprint"] == second.lineage["rows_fingerprint"]
    assert await redis.xlen(Stream.MODEL_ACTIVATED.value) == 0


async def test_seed_003_error_codes_on_outcomes(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, tmp_path: Path
) -> None:
    deps = _deps(sessions, redis, tmp_path, num_boost_round=10)
    await _insert_outcomes(sessions, 60)
    await handle_retrain(RetrainModel(slot=XGB), key="few", deps=deps)
    await _insert_outcomes(sessions, 80, width=7, schema_hash="f" * 64, seed=2)  # another producer's rows
    await handle_retrain(RetrainModel(slot=XGB), key="invalid", deps=deps)
    await handle_retrain(RetrainModel(slot=XGB, overrides=RetrainOverrides(architecture="default_simple")),
                         key="bad-override", deps=deps)
    failures = [e for e in await _events(redis, Stream.RETRAIN_FAILED) if isinstance(e, RetrainFailed)]
    assert [f.error_code for f in failures] == [RetrainErrorCode.INSUFFICIENT_SAMPLES,
                                                RetrainErrorCode.TOO_FEW_VALID_SAMPLES,
                                                RetrainErrorCode.INVALID_PARAMETERS]
    assert failures[1].details["samples"] == 140 and failures[1].details["valid_samples"] == 60
    assert await redis.xlen(Stream.MODEL_TRAINED.value) == 0


async def test_a_registered_100_feature_schema_is_trained_and_shipped(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, tmp_path: Path
) -> None:
    schema = make_schema([f"f{i:03d}" for i in range(100)])
    await register_feature_schema(sessions, schema)
    await _insert_outcomes(sessions, 150, width=100, schema_hash=schema.hash)
    await _insert_outcomes(sessions, 10, seed=5, start=datetime.now(UTC) - timedelta(days=25))  # old schema rows
    deps = _deps(sessions, redis, tmp_path, num_boost_round=10, outcome_feature_schema="newest")
    await handle_retrain(RetrainModel(slot=XGB), key="wide", deps=deps)
    [event] = [e for e in await _events(redis, Stream.MODEL_TRAINED) if isinstance(e, ModelTrained)]
    assert event.feature_schema_hash == schema.hash and event.lineage["feature_count"] == 100
    assert event.lineage["samples_rejected"] == {"other_schema": 10, "wrong_length": 0}
    predictor = load_predictor(ArtifactStore(tmp_path), event.artifact, expected_schema_hash=schema.hash)
    assert len(predictor.predict(np.zeros((3, 100), dtype=np.float32))) == 3


class _GatedXGBoost(XGBoostFamily):
    """The real family, whose fit waits until the test opens the gate (a run that is surely still training)."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def fit(self, config: Any, data: Any, report: Report) -> FitResult:
        assert self.gate.wait(timeout=30)
        return super().fit(config, data, report)


async def test_a_command_for_a_slot_in_training_is_coalesced(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, tmp_path: Path
) -> None:
    await _insert_outcomes(sessions, 200)
    family = _GatedXGBoost()
    deps = _deps(sessions, redis, tmp_path, num_boost_round=20)
    deps.families[Family.XGBOOST] = family
    first = asyncio.create_task(handle_retrain(RetrainModel(slot=XGB), key="first", deps=deps))
    for _ in range(500):
        if await holder_of(sessions, XGB.key) is not None:
            break
        await asyncio.sleep(0.01)
    second = RetrainModel(slot=XGB, requested_by="impatient")
    await handle_retrain(second, key="second", deps=deps)
    family.gate.set()
    await first
    await handle_retrain(second, key="second", deps=deps)  # a redelivery changes nothing
    trained = [e for e in await _events(redis, Stream.MODEL_TRAINED) if isinstance(e, ModelTrained)]
    coalesced = [e for e in await _events(redis, Stream.RETRAIN_PROGRESS)
                 if isinstance(e, RetrainProgress) and e.stage == "coalesced"]
    assert len(trained) == 1 and len(coalesced) == 1
    assert coalesced[0].detail["coalesced_into"] == trained[0].run_id
    assert coalesced[0].detail["command_event_id"] == str(second.event_id)
    async with sessions() as session:
        runs = {r.idempotency_key: r for r in (await session.execute(select(RetrainRun))).scalars()}
    assert runs["first"].status == "succeeded" and runs["second"].status == "coalesced"
    assert runs["second"].version_id is None and await holder_of(sessions, XGB.key) is None
    await handle_retrain(RetrainModel(slot=XGB), key="third", deps=deps)  # the slot is free again
    assert await redis.xlen(Stream.MODEL_TRAINED.value) == 2


async def test_two_scheduler_replicas_publish_one_command_per_tick(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, tmp_path: Path
) -> None:
    """Two replicas on a cron of every second: each (slot, tick) is published once and runs once."""
    settings = TrainerSettings(retrain_cron="* * * * * *", retrain_slots=f"{XGB.key},{CNN.key}",
                               retrain_misfire_grace_seconds=0)
    replicas = [RetrainScheduler(settings, EventPublisher(redis)) for _ in range(2)]
    for replica in replicas:
        await replica.start()
    await asyncio.sleep(2.6)
    for replica in replicas:
        await replica.stop()
    commands = [e for e in await _events(redis, Stream.RETRAIN_MODEL) if isinstance(e, RetrainModel)]
    keys = [c.idempotency_key for c in commands]
    ticks = {c.occurred_at for c in commands}
    assert len(keys) == len(set(keys)) == 2 * len(ticks) and len(ticks) >= 2
    assert sum(r.published for r in replicas) == len(commands)
    assert all(c.idempotency_key == schedule_key(c.slot, c.occurred_at) for c in commands)
    deps = _deps(sessions, redis, tmp_path, min_samples=10_000)
    for command in commands[:2] * 2:  # both replicas handling the same tick: still one run per key
        await handle_retrain(command, key=command.idempotency_key or "", deps=deps)
    async with sessions() as session:
        runs = (await session.execute(select(RetrainRun))).scalars().all()
    assert sorted(r.idempotency_key for r in runs) == sorted(keys[:2])

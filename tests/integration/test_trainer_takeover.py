"""Two trainer processes share the work; the one training is SIGKILLed mid-run; the other reclaims
the command, finishes the same run and exactly one ModelTrained / version results."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.trainer.feature_schemas import serving_schema
from shared.broker import Redis
from shared.cli.processes import ServiceGroup
from shared.db.models import RetrainRun, TrainingSample
from shared.messages import Family, ModelTrained, RetrainModel, RetrainOverrides, RetrainProgress, Slot
from shared.publishing import EventPublisher
from shared.streams import Group, Stream
from shared.waiting import decode_entry, tail_ids, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SLOT = Slot(family=Family.XGBOOST, market="ADA-EUR", timeframe="1h")


async def _insert_outcomes(sessions: async_sessionmaker[AsyncSession], n: int) -> None:
    rng = np.random.default_rng(7)
    first = datetime.now(UTC) - timedelta(days=25)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        features = rng.normal(size=20).astype(np.float32)
        entry = first + timedelta(minutes=10 * i)
        rows.append({
            "symbol": SLOT.market, "timeframe": SLOT.timeframe, "timestamp": entry, "predicted_action": "BUY",
            "prediction_confidence": 0.6, "features": features, "feature_count": 20,
            "feature_schema_hash": serving_schema().hash, "entry_time": entry, "exit_time": entry + timedelta(hours=1),
            "target_label": float(0.01 * features[0] + rng.normal(0, 0.002)), "outcome_known": True,
        })
    async with sessions() as session, session.begin():
        await session.execute(TrainingSample.__table__.insert(), rows)


async def test_a_trainer_killed_mid_run_is_replaced_and_one_version_results(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    await _insert_outcomes(sessions, 3000)
    group = ServiceGroup(
        env={"REDIS_URL": redis_url, "DATABASE_URL": database_url, "TRADELOOP_DATA_DIR": str(tmp_path),
             "TRADELOOP_RECLAIM_IDLE_MS": "1500", "TRADELOOP_RECLAIM_POLL_MS": "100",
             "TRADELOOP_LEASE_SECONDS": "0.3", "TRADELOOP_RETRAIN_ENABLED": "false"},
        log_dir=tmp_path / "logs",
    )
    try:
        for name in ("trainer-a", "trainer-b"):
            group.start("trainer", extra_env={"TRADELOOP_CONSUMER": name}, instance=name)
        await asyncio.to_thread(group.wait_ready, 90.0)
        streams = [Stream.RETRAIN_PROGRESS, Stream.MODEL_TRAINED, Stream.RETRAIN_FAILED]
        after = await tail_ids(redis, streams)
        command = RetrainModel(slot=SLOT, overrides=RetrainOverrides(num_boost_round=8000), requested_by="test")
        await EventPublisher(redis).publish(command)
        training = await wait_for(redis, [Stream.RETRAIN_PROGRESS],
                                  lambda m: isinstance(m, RetrainProgress) and m.stage == "training",
                                  after={Stream.RETRAIN_PROGRESS.value: after[Stream.RETRAIN_PROGRESS.value]},
                                  timeout=60)
        assert training is not None, "no run started"
        pending: Any = await redis.xpending_range(Stream.RETRAIN_MODEL.value, Group.TRAINER.value, "-", "+", 10)
        [entry] = pending
        owner = entry["consumer"].decode().removesuffix("-reclaim")
        survivor = "trainer-b" if owner == "trainer-a" else "trainer-a"
        group.kill(owner)  # SIGKILL while training

        answers = [Stream.MODEL_TRAINED, Stream.RETRAIN_FAILED]
        answer = await wait_for(redis, answers, lambda m: True, after={s.value: after[s.value] for s in answers},
                                timeout=90)
        assert isinstance(answer, ModelTrained), answer
        await asyncio.sleep(1.0)  # anything else that would still arrive
        trained = [decode_entry(Stream.MODEL_TRAINED, f) for _i, f in await redis.xrange(Stream.MODEL_TRAINED.value)]
        assert len(trained) == 1 and await redis.xlen(Stream.RETRAIN_FAILED.value) == 0
        async with sessions() as session:
            runs = (await session.execute(select(RetrainRun))).scalars().all()
        assert [(r.run_id, r.status, r.version_id) for r in runs] == [(answer.run_id, "succeeded", answer.version_id)]
        assert (await redis.xpending(Stream.RETRAIN_MODEL.value, Group.TRAINER.value))["pending"] == 0
        assert "taking over run" in group.processes[survivor].log_tail(200)
    finally:
        await asyncio.to_thread(group.stop_all)

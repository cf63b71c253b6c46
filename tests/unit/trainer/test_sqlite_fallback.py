"""The trainer's database code on the SQLite fallback: outcome loading, schemas, slot leases, a whole run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.trainer import slot_leases
from services.trainer.feature_schemas import find_schema, make_schema, register_feature_schema, serving_schema
from services.trainer.handlers import TrainerDeps, TrainerMetrics, handle_retrain
from services.trainer.outcomes import has_outcomes, load_outcome_samples
from services.trainer.settings import TrainerSettings
from shared.artifacts import ArtifactStore
from shared.db.models import TrainingSample
from shared.messages import Family, Message, ModelTrained, RetrainModel, RetrainProgress, Slot

pytestmark = pytest.mark.asyncio(loop_scope="session")
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
SLOT = Slot(family=Family.XGBOOST, market="BTC-EUR", timeframe="1h")


def _row(i: int, features: np.ndarray, schema_hash: str | None, **changes: Any) -> dict[str, Any]:
    entry = NOW - timedelta(days=10) + timedelta(hours=i)
    row = {"symbol": "BTC-EUR", "timeframe": "1h", "timestamp": entry, "predicted_action": "BUY",
           "prediction_confidence": 0.5, "features": features, "feature_count": features.shape[0],
           "feature_schema_hash": schema_hash, "entry_time": entry, "exit_time": entry + timedelta(hours=3),
           "target_label": 0.01 * float(features[0]), "outcome_known": True}
    return {**row, **changes}


async def _insert(sessions: async_sessionmaker[AsyncSession], rows: list[dict[str, Any]]) -> None:
    async with sessions() as session, session.begin():
        await session.execute(TrainingSample.__table__.insert(), rows)


async def test_outcome_rows_are_loaded_in_entry_order_and_sorted_out_by_schema(
    sqlite: async_sessionmaker[AsyncSession],
) -> None:
    serving = serving_schema().hash
    rng = np.random.default_rng(0)
    good = [_row(i, rng.normal(size=20).astype(np.float32), serving) for i in range(30)]
    good.reverse()  # inserted newest first: loading must order by entry time
    odd = [_row(40, np.ones(7, np.float32), "a" * 64), _row(41, np.ones(5, np.float32), serving),
           _row(42, np.ones(20, np.float32), serving, target_label=None),
           _row(43, np.ones(20, np.float32), serving, exit_time=NOW + timedelta(days=1)),  # after the window
           _row(44, np.ones(20, np.float32), serving, symbol="ETH-EUR"),
           _row(45, np.ones(20, np.float32), serving, outcome_known=False)]
    assert not await has_outcomes(sqlite, "BTC-EUR", "1h")
    await _insert(sqlite, good + odd)
    assert await has_outcomes(sqlite, "BTC-EUR", "1h") and not await has_outcomes(sqlite, "XRP-EUR", "1h")
    samples = await load_outcome_samples(sqlite, "BTC-EUR", "1h", window_days=30, until=NOW)
    assert samples.total == 33 and samples.rejected == {"other_schema": 1, "wrong_length": 1}
    assert samples.features.shape == (31, 20) and np.isnan(samples.labels[-1])
    assert (np.diff(samples.times) > np.timedelta64(0)).all()
    assert (samples.label_ends - samples.times == np.timedelta64(3, "h")).all()
    np.testing.assert_array_equal(samples.features[0], good[-1]["features"])
    unknown = await load_outcome_samples(sqlite, "BTC-EUR", "1h", window_days=30, until=NOW, schema="b" * 64)
    assert unknown.total == 33 and unknown.rejected == {"unknown_schema": 33} and unknown.features.shape[0] == 0


async def test_schemas_register_once_and_must_hash_right(sqlite: async_sessionmaker[AsyncSession]) -> None:
    schema = make_schema(["a", "b", "c"])
    assert await register_feature_schema(sqlite, schema) == await register_feature_schema(sqlite, schema)
    found = await find_schema(sqlite, schema.hash)
    assert found is not None and found.names == ["a", "b", "c"]
    assert await find_schema(sqlite, "c" * 64) is None
    assert await find_schema(sqlite, serving_schema().hash) == serving_schema()
    with pytest.raises(ValueError, match="unique"):
        make_schema(["a", "a"])


async def test_slot_leases_take_over_only_own_or_stale_runs(sqlite: async_sessionmaker[AsyncSession]) -> None:
    assert await slot_leases.acquire(sqlite, "s", "run-1", "a", stale_after=60) == "run-1"
    assert await slot_leases.acquire(sqlite, "s", "run-2", "b", stale_after=60) == "run-1"  # coalesce
    assert await slot_leases.acquire(sqlite, "s", "run-1", "b", stale_after=60) == "run-1"  # same run: take over
    assert await slot_leases.renew(sqlite, "s", "run-1") and not await slot_leases.renew(sqlite, "s", "run-2")
    assert await slot_leases.acquire(sqlite, "s", "run-2", "b", stale_after=0) == "run-2"  # stale: taken
    await slot_leases.release(sqlite, "s", "run-1")  # not the holder: nothing happens
    assert await slot_leases.holder_of(sqlite, "s") == "run-2"
    await slot_leases.release(sqlite, "s", "run-2")
    assert await slot_leases.holder_of(sqlite, "s") is None


class _Publisher:
    """EventPublisher's interface, in memory."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.keys: set[str] = set()

    async def publish(self, message: Message) -> str:
        self.messages.append(message)
        return str(len(self.messages))

    async def publish_once(self, messages: list[tuple[str, Message]]) -> int:
        new = [(key, message) for key, message in messages if key not in self.keys]
        for key, message in new:
            self.keys.add(key)
            await self.publish(message)
        return len(new)


async def test_a_whole_outcome_run_on_sqlite(sqlite: async_sessionmaker[AsyncSession], tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    await _insert(sqlite, [_row(i, rng.normal(size=20).astype(np.float32), serving_schema().hash) for i in range(150)])
    publisher = _Publisher()
    deps = TrainerDeps(TrainerSettings(num_boost_round=20, consumer="t"), sqlite, ArtifactStore(tmp_path),
                       publisher, TrainerMetrics.create(None))  # type: ignore[arg-type]
    await handle_retrain(RetrainModel(slot=SLOT, occurred_at=NOW), key="k", deps=deps)
    trained = [m for m in publisher.messages if isinstance(m, ModelTrained)]
    stages = [m.stage for m in publisher.messages if isinstance(m, RetrainProgress)]
    assert len(trained) == 1 and trained[0].lineage["source"] == "trade_outcomes"
    assert trained[0].lineage["samples_total"] == 150
    assert stages == ["loading", "training", "saving", "trained"]

"""The array INSERT (shared.db.bulk) on real PostgreSQL: every column round-trips, conflicts are skipped."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.inference.predictions import PREDICTION_KEY
from shared.db.bulk import UnnestInsert
from shared.db.models import Prediction

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def _rows(version: str, count: int, start: datetime) -> list[dict[str, object]]:
    rng = np.random.default_rng(count)
    return [
        {"prediction_id": str(uuid.uuid4()), "slot_key": "xgboost:BTC-EUR:1m", "version_id": version,
         "market": "BTC-EUR", "timeframe": "1m", "candle_open_time": start + timedelta(minutes=i),
         "action": ("BUY", "SELL", "HOLD")[i % 3], "confidence": float(rng.random()),
         "predicted_return": float(rng.normal()) * 1e-3, "shadow": bool(i % 2),
         "features": rng.normal(size=17).astype(np.float32),
         "created_at": datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))) + timedelta(seconds=i)}
        for i in range(count)
    ]


async def test_unnest_insert_round_trips_every_column_and_skips_conflicts(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.fail("this test needs PostgreSQL (DATABASE_URL)")
    version = f"bulk-{uuid.uuid4().hex[:8]}"
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = _rows(version, 50, start)
    bulk = UnnestInsert.of(Prediction.__table__, PREDICTION_KEY)  # type: ignore[arg-type]
    async with engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await bulk.execute(autocommit, rows)
        # the same (version, candle) keys again, with new ids and values, plus 10 new candles: only those land
        await bulk.execute(autocommit, _rows(version, 60, start))
    async with sessions() as session:
        stored = (await session.execute(
            select(Prediction).where(Prediction.version_id == version).order_by(Prediction.candle_open_time)
        )).scalars().all()
        assert len(stored) == 60
        for row, expected in zip(stored[:50], rows, strict=True):
            for name in ("prediction_id", "slot_key", "market", "timeframe", "action", "confidence",
                         "predicted_return", "shadow"):
                assert getattr(row, name) == expected[name], name
            assert row.candle_open_time == expected["candle_open_time"]
            assert row.created_at == expected["created_at"] and row.created_at.tzinfo is not None
            assert np.array_equal(row.features, expected["features"])
        await session.execute(delete(Prediction).where(Prediction.version_id == version))
        await session.commit()


async def test_unnest_insert_refuses_a_naive_timestamp(engine: AsyncEngine) -> None:
    rows = _rows("naive", 1, datetime(2026, 1, 1))  # naive on purpose
    bulk = UnnestInsert.of(Prediction.__table__, PREDICTION_KEY)  # type: ignore[arg-type]
    async with engine.connect() as connection:
        with pytest.raises(ValueError, match="naive"):
            await bulk.execute(connection, rows)

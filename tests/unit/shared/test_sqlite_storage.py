"""The embedded SQLite fallback: same migrations, timezone-aware UTC, float32 vectors, upserts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from shared.db.migrate import upgrade
from shared.db.models import Candle, TrainingSample
from shared.db.session import dialect_insert, make_engine, make_sessionmaker, rows_affected


def test_sqlite_schema_timestamps_vectors_and_idempotent_upserts(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'embedded.db'}")
        try:
            await upgrade(engine)
            await upgrade(engine)  # a second start finds nothing to do
            sessions = make_sessionmaker(engine)
            aware = datetime.fromisoformat("2026-06-01T08:30:00-04:00")
            row = {"market": "BTC-EUR", "timeframe": "1h", "open_time": aware, "open": 1.0, "high": 2.0,
                   "low": 0.5, "close": 1.5, "volume": 3.0, "source": "test"}
            async with sessions() as session, session.begin():
                first = rows_affected(await session.execute(
                    dialect_insert(session, Candle).values([row]).on_conflict_do_nothing(
                        index_elements=["market", "timeframe", "open_time"])))
                again = rows_affected(await session.execute(
                    dialect_insert(session, Candle).values([row]).on_conflict_do_nothing(
                        index_elements=["market", "timeframe", "open_time"])))
                session.add(TrainingSample(symbol="BTC-EUR", timestamp=aware, predicted_action="SELL",
                                           prediction_confidence=0.4, features=np.array([0.25, -1.5], np.float32),
                                           feature_count=2))
            assert (first, again) == (1, 0)
            async with sessions() as session:
                stored = (await session.execute(select(Candle))).scalar_one()
                count = (await session.execute(select(func.count()).select_from(Candle))).scalar_one()
                sample = (await session.execute(select(TrainingSample))).scalar_one()
            assert count == 1
            assert stored.open_time == datetime(2026, 6, 1, 12, 30, tzinfo=UTC)
            assert sample.timestamp.tzinfo is not None
            np.testing.assert_array_equal(sample.features, np.array([0.25, -1.5], np.float32))
        finally:
            await engine.dispose()

    asyncio.run(scenario())

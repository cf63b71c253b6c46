"""End to end: the four services as processes on real Redis and PostgreSQL.

Commands are sent with the real ``redis-cli`` binary, exactly as README shows, so a reader can
drive tradeloop without Python.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.cli.demo import Loop, LoopConfig
from shared.db.models import ActivationHistory, Prediction, SlotChampion
from shared.messages import Family, Message, Slot, stream_of

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


def _redis_cli_sender(redis_url: str):  # type: ignore[no-untyped-def]
    binary = shutil.which("redis-cli")
    assert binary, "redis-cli is needed for the README flow"
    parts = urlsplit(redis_url)

    async def send(message: Message) -> object:
        argv = [binary, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379),
                "-n", parts.path.lstrip("/") or "0",
                "XADD", stream_of(message).value, "*", "__data__", message.model_dump_json(exclude_defaults=True)]
        result = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, check=True)
        return result.stdout.strip()

    return send


async def test_loop_with_hot_swap_under_flowing_candles(
    redis_url: str, database_url: str, clean_database: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """Given the four services, when a retrain and two activations are sent with redis-cli while
    candles flow, then versions are recorded, inference hot-swaps twice without restart, every
    candle after the first activation has a prediction, and later predictions carry the new id."""
    config = LoopConfig(redis_url=redis_url, database_url=database_url, data_dir=tmp_path,
                        slot=Slot(family=Family.XGBOOST, market="BTC-EUR", timeframe="1m"),
                        flow_seconds=8.0, history_candles=1200, echo=False)
    report = await Loop(config, send=_redis_cli_sender(redis_url)).run()

    assert report.ok, report
    assert len(report.versions) == 2
    first, second = (v["version"] for v in report.versions)
    assert report.champion == second
    assert report.candles_without_prediction == 0
    assert report.predictions_per_version.get(first, 0) > 0
    assert report.predictions_per_version.get(second, 0) > 0
    assert [s["epoch"] for s in report.swaps] == [1, 2]

    swapped_at = report.swaps[-1]["swapped_at"]
    async with clean_database() as session:
        champion = (await session.execute(select(SlotChampion))).scalar_one()
        epochs = (await session.execute(select(ActivationHistory.epoch))).scalars().all()
        late = (await session.execute(
            select(Prediction.version_id).where(Prediction.created_at > swapped_at + timedelta(seconds=0.5))
        )).scalars().all()
    assert champion.version_id == second and champion.epoch == 2 and sorted(epochs) == [1, 2]
    assert late and set(late) == {second}, "predictions after the swap must carry the new version id"

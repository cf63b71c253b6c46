"""The tradeloop CLI against a running registry (in-process broker, real Redis + PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from argparse import Namespace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from services.registry.main import build
from services.registry.settings import RegistrySettings
from services.trainer.datasets import bootstrap_samples
from services.trainer.families.xgboost import XGBoostParams
from services.trainer.pipeline import RunConfig, train_xgboost
from shared.artifacts import ArtifactStore
from shared.broker import Redis
from shared.cli import commands
from shared.messages import Family, ModelTrained, Slot
from shared.ml.features import feature_schema_hash
from shared.publishing import EventPublisher
from shared.settings import ServiceSettings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SLOT = Slot(family=Family.XGBOOST, market="ETH-EUR", timeframe="1h")


def _bundle(root: Path) -> Any:


    rng = np.random.default_rng(5)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, 500)))
    candles = pd.DataFrame({"open_time": pd.date_range("2026-01-01", periods=500, freq="1h", tz="UTC"),
                            "open": close, "high": close * 1.003, "low": close * 0.997, "close": close,
                            "volume": rng.uniform(1, 5, 500)})
    trained = train_xgboost(bootstrap_samples(candles, datetime(2025, 12, 1, tzinfo=UTC), 4),
                            RunConfig(100, 60, 4, 0.2, 0.001, XGBoostParams(10, 2, 0.2, 1)), {})
    return ArtifactStore(root).put_bundle(trained.files, trained.metadata)


async def test_cli_activate_shadow_rollback_archive_and_models(
    redis: Redis, redis_url: str, database_url: str, sessions: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = RegistrySettings(admin_token="cli-test-token-0123456789", redis_url=redis_url,
                                database_url=database_url, artifact_dir=tmp_path, consumer=f"cli-{uuid.uuid4().hex}")
    runtime = build(settings)
    await runtime.app.start()
    try:
        ref = _bundle(tmp_path)
        versions = [f"v20260301_00000{n}" for n in range(3)]
        for n, version in enumerate(versions):
            await EventPublisher(redis).publish(ModelTrained(
                version_id=version, slot=SLOT, run_id=f"r{n}", model_type="xgboost_continuous", artifact=ref,
                feature_schema_hash=feature_schema_hash(), trained_at=f"2026-03-01T00:00:0{n}Z",
                training_samples=300, validation_samples=80, metrics={"validation_accuracy": 0.5 + n / 100}))
        cli = ServiceSettings(redis_url=redis_url, database_url=database_url)

        def run(function: Any, **args: Any) -> int:
            return int(function(cli, Namespace(requested_by="cli:test", reason="test", wait=20.0, **args)))

        await asyncio.sleep(1.0)
        assert await asyncio.to_thread(run, commands.activate, version=versions[0]) == 0
        assert await asyncio.to_thread(run, commands.activate, version=versions[1]) == 0
        assert await asyncio.to_thread(run, commands.shadow, action="add", version=versions[2]) == 0
        assert await asyncio.to_thread(run, commands.rollback, slot=SLOT.key, to=None) == 0
        assert await asyncio.to_thread(run, commands.archive, version=versions[1]) == 0
        assert await asyncio.to_thread(run, commands.archive, version=versions[0]) == 1  # the champion: refused
        assert await asyncio.to_thread(run, commands.activate, version="v20990101_000000") == 1
        capsys.readouterr()
        assert await asyncio.to_thread(commands.models, cli, Namespace(slot=SLOT.key, json=False)) == 0
        table = capsys.readouterr().out
    finally:
        await runtime.app.stop()
        for hook in runtime.on_stop:
            await hook()
    lines = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert "yes (3)" in lines[versions[0]]  # activated, replaced, rolled back to: epoch 3
    assert set(lines) == set(versions)

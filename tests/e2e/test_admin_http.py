"""End to end: seed 003's admin flow with the real ``curl``, exactly as README.md shows it, against the
registry process while the four services run as processes and candles flow.

The commands are read from README.md's "Admin HTTP API" section, so README cannot drift from what works:
only the host (``localhost:8000`` → the registry's port) and the example version id are substituted.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.broker import make_redis
from shared.cli.demo import LoopReport, ServiceHook
from shared.cli.processes import ServiceGroup
from shared.messages import Family, ModelSwapped, PredictionMade, Slot
from shared.streams import Stream
from shared.waiting import tail_ids, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

SLOT = Slot(family=Family.XGBOOST, market="BTC-EUR", timeframe="1m")

ROOT = Path(__file__).resolve().parents[2]
README_HOST = "http://localhost:8000"
README_VERSION = "v20261122_030000"


def readme_curl_commands() -> list[str]:
    """The ``curl`` lines of README.md's "Admin HTTP API" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Admin HTTP API", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's Admin HTTP API section has no bash block"
    commands = [line for line in block.group(1).splitlines() if line.startswith("curl ")]
    assert len(commands) == 4, commands
    return commands


def curl(command: str, token: str | None, *, base_url: str, version: str = README_VERSION) -> tuple[int, Any]:
    """Run one README curl line in a shell (``$TRADELOOP_ADMIN_TOKEN`` from the environment); (status, JSON)."""
    line = command.replace(README_HOST, base_url).replace(README_VERSION, version)
    line = line.replace("curl ", "curl -sS --max-time 170 -o - -w '\\n%{http_code}' ", 1)
    env = {**os.environ, "TRADELOOP_ADMIN_TOKEN": token or ""}
    if token is None:  # no header at all
        line = re.sub(r""" -H "X-Admin-Token: \$TRADELOOP_ADMIN_TOKEN\"""", "", line)
    result = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True, timeout=180, check=True)
    body, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(body) if body.strip() else None


async def test_seed_003_curl_flow_as_readme_shows_it(
    redis_url: str, clean_database: async_sessionmaker[AsyncSession], short_loop: Callable[[ServiceHook], Awaitable[LoopReport]]
) -> None:
    """Given the four services with a configured token, when README's curl lines are run in order, then the
    retrain trains a version, the list shows it, activating it hot-swaps inference (predictions by it follow),
    and training samples answer in the seed's shape; no token is 401, a wrong one 403."""
    assert shutil.which("curl"), "curl is needed for the README flow"
    retrain, models, activate, samples = readme_curl_commands()
    findings: dict[str, Any] = {}
    redis = make_redis(redis_url)

    async def while_running(services: ServiceGroup) -> None:
        token = services.env["TRADELOOP_ADMIN_TOKEN"]
        base = services.processes["registry"].base_url

        def run(command: str, used: str | None = token, **kwargs: Any) -> tuple[int, Any]:
            return curl(command, used, base_url=base, **kwargs)

        findings["unauthenticated"] = (await asyncio.to_thread(run, models, None))[0]
        findings["wrong_token"] = (await asyncio.to_thread(run, models, token + "x"))[0]
        findings["retrain"] = await asyncio.to_thread(run, retrain)
        version = findings["retrain"][1]["version_id"]
        findings["models"] = await asyncio.to_thread(run, models)
        after = await tail_ids(redis, [Stream.MODEL_SWAPPED, Stream.PREDICTION_MADE])
        findings["activate"] = await asyncio.to_thread(run, activate, version=version)
        findings["swapped"] = await wait_for(
            redis, [Stream.MODEL_SWAPPED], lambda m: isinstance(m, ModelSwapped) and m.version_id == version,
            after=after, timeout=60.0)
        findings["predicted"] = await wait_for(
            redis, [Stream.PREDICTION_MADE],
            lambda m: isinstance(m, PredictionMade) and m.version_id == version and not m.shadow,
            after=after, timeout=60.0)
        findings["samples"] = await asyncio.to_thread(run, samples)
        findings["unknown"] = (await asyncio.to_thread(run, activate, version="v20990101_000000"))[0]

    try:
        report = await short_loop(while_running)
    finally:
        await redis.aclose()

    assert findings["unauthenticated"] == 401 and findings["wrong_token"] == 403
    status, trained = findings["retrain"]
    assert status == 200 and trained["status"] == "success", trained
    assert trained["training_samples"] >= 100 and trained["validation_samples"] > 0
    assert {"train_accuracy", "validation_accuracy", "train_mae", "validation_mae", "model_path", "message"} <= set(
        trained)
    status, listed = findings["models"]
    assert status == 200 and listed["status"] == "ok"
    by_id = {m["version_id"]: m for m in listed["models"]}
    assert trained["version_id"] in by_id and len(by_id) == 3  # the loop's two and the one curl trained
    assert by_id[trained["version_id"]]["is_active"] is False  # manual policy: trained is not activated
    assert {"total_predictions", "correct_predictions", "live_accuracy", "total_pnl"} <= set(
        by_id[trained["version_id"]])
    status, activated = findings["activate"]
    assert status == 200 and activated["status"] == "success", activated
    assert activated["activated_version"] == trained["version_id"] and activated["epoch"] == 3
    swapped = findings["swapped"]
    assert isinstance(swapped, ModelSwapped) and swapped.epoch == 3, swapped
    assert isinstance(findings["predicted"], PredictionMade), "no prediction by the version activated with curl"
    assert report.predictions_per_version.get(trained["version_id"], 0) > 0
    status, answer = findings["samples"]
    assert status == 200 and answer["status"] == "ok" and answer["count"] == len(answer["samples"]) <= 50
    assert all(s["outcome_known"] for s in answer["samples"])
    assert findings["unknown"] == 404


async def test_the_registry_process_refuses_to_start_with_the_seed_example_token(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    services = ServiceGroup(env={"REDIS_URL": redis_url, "DATABASE_URL": database_url,
                                 "TRADELOOP_DATA_DIR": str(tmp_path), "TRADELOOP_ADMIN_TOKEN": "live-admin-token"},
                            log_dir=tmp_path / "logs")
    registry = services.start("registry")
    try:
        code = await asyncio.to_thread(registry.process.wait, 60)
    finally:
        services.stop_all()
    log = registry.log_tail()
    assert code != 0, log
    assert "admin_token" in log.lower() and "live-admin-token" not in log, log  # the reason, never the secret

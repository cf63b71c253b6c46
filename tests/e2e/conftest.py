"""What the end-to-end tests share: a short run of the whole loop with a hook while it runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from shared.cli.demo import Loop, LoopConfig, LoopReport, ServiceHook
from shared.messages import Family, Slot

SLOT = Slot(family=Family.XGBOOST, market="BTC-EUR", timeframe="1m")


@pytest.fixture
def short_loop(redis_url: str, database_url: str, tmp_path: Path) -> Callable[[ServiceHook], Awaitable[LoopReport]]:
    """Run the four services through the loop (two versions activated, 4 s of flow) with ``while_running``
    awaited after the second activation; the report, asserted ok (no candle without a prediction)."""

    async def run(while_running: ServiceHook) -> LoopReport:
        config = LoopConfig(redis_url=redis_url, database_url=database_url, data_dir=tmp_path, slot=SLOT,
                            flow_seconds=4.0, history_candles=1000, echo=False)
        report = await Loop(config, while_running=while_running).run()
        assert report.ok, report
        return report

    return run

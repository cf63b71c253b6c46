"""The user's own history (``tradeloop import-candles``) and account fills (trades endpoint, API keys)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest import ledger
from services.ingest.exchange.bitvavo import BitvavoClient, BitvavoClientConfig
from services.ingest.exchange.sim_server import SimConfig, SimExchange, SimFill
from services.ingest.fills import import_fills
from services.ingest.planning import Span
from services.ingest.repository import recorded_gaps, stored_open_times
from services.ingest.sources import read_candle_file
from services.ingest.validation import RawCandle
from shared.broker import Redis
from shared.cli.ingest_commands import _import
from shared.db.models_ingest import AccountFill
from shared.settings import ServiceSettings
from shared.streams import Stream

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000


def history(path: Path) -> Path:
    """Ten hourly candles with a two-hour gap, plus three malformed rows."""
    rows: list[dict[str, Any]] = [
        {"timestamp": T0 + i * HOUR, "open": 100 + i, "high": 102 + i, "low": 99 + i, "close": 101 + i, "volume": 5}
        for i in range(12) if i not in (4, 5)
    ]
    rows += [
        {"timestamp": T0 + 12 * HOUR, "open": 100, "high": 90, "low": 80, "close": 85, "volume": 1},  # high < open
        {"timestamp": T0 + 13 * HOUR + 1, "open": 100, "high": 101, "low": 99, "close": 100, "volume": 1},  # unaligned
        {"timestamp": T0 + 14 * HOUR, "open": 100, "high": 101, "low": 99, "close": 100, "volume": -3},
    ]
    pd.DataFrame(rows).sample(frac=1.0, random_state=3).to_csv(path, index=False)  # shuffled on purpose
    return path


async def test_import_validates_stores_records_gaps_and_dead_letters_bad_rows(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    settings = ServiceSettings(redis_url=redis_url, database_url=database_url)
    frame = pd.read_csv(history(tmp_path / "mine.csv"))
    candles = [RawCandle(int(r[0]), *map(float, r[1:])) for r in read_candle_file(tmp_path / "mine.csv").itertuples(
        index=False)]
    assert len(candles) == len(frame) == 13
    summary = await _import(settings, candles, "BTC-EUR", "1h", "import", publish=True, mark=True)
    assert (summary["stored"], summary["rejected"], summary["published"], summary["gap_intervals"]) == (10, 3, 10, 2)
    assert await stored_open_times(sessions, "BTC-EUR", "1h") == [T0 + i * HOUR for i in range(12) if i not in (4, 5)]
    [gap] = await recorded_gaps(sessions, "BTC-EUR", "1h")
    assert (gap.start_ms, gap.end_ms, gap.missing) == (T0 + 4 * HOUR, T0 + 6 * HOUR, 2)
    letters = [f for _, f in await redis.xrange(Stream.CANDLE_CLOSED.dlq) if b"BTC-EUR" in f[b"payload"]]
    reasons = sorted(f[b"error"].decode() for f in letters if b'"source": "import"' in f[b"payload"])
    assert reasons == ["invalid candle: high below open/close", "invalid candle: negative volume",
                       "invalid candle: open time not aligned to the interval"]
    assert await ledger.covered(sessions, "BTC-EUR", "1h") == [Span(T0, T0 + 15 * HOUR)]

    again = await _import(settings, candles, "BTC-EUR", "1h", "import", publish=True, mark=True)
    assert (again["stored"], again["published"], again["gap_intervals"]) == (0, 0, 0)


async def test_account_fills_are_imported_once_from_the_sim(sessions: async_sessionmaker[AsyncSession]) -> None:
    now_ms = int(time.time() * 1000)
    fills = tuple(
        SimFill(market="BTC-EUR", side="buy" if i % 2 else "sell", amount="0.01", price=f"{60000 + i}",
                timestamp_ms=now_ms - (10 - i) * 60_000, fee="0.15")
        for i in range(7)
    )
    with SimExchange(SimConfig(seed=1, api_key="k" * 64, api_secret="s" * 64, fills=fills)) as sim:
        client = BitvavoClient(BitvavoClientConfig(rest_url=sim.base_url, api_key="k" * 64, api_secret="s" * 64))
        assert await import_fills(client, sessions, ["BTC-EUR", "ETH-EUR"]) == 7
        assert await import_fills(client, sessions, ["BTC-EUR", "ETH-EUR"]) == 0
        anonymous = BitvavoClient(BitvavoClientConfig(rest_url=sim.base_url))
        assert not anonymous.has_credentials
    async with sessions() as session:
        rows = (await session.execute(select(AccountFill).order_by(AccountFill.executed_at))).scalars().all()
        assert (await session.execute(select(func.count()).select_from(AccountFill))).scalar_one() == 7
    assert [r.side for r in rows[:2]] == ["SELL", "BUY"] and rows[0].price == 60000.0 and rows[0].fee == 0.15

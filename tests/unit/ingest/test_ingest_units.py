"""Outcome arithmetic, CandleClosed payloads, the accelerated sim clock and the 0002_ingest migration."""

from __future__ import annotations

import argparse
import asyncio
import math
import random
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from services.ingest.exchange.sim_server import AcceleratedClock, add_arguments, config_from_args
from services.ingest.handlers import _closed_event, closed_payloads
from services.ingest.outcomes import compute_outcome
from services.ingest.repository import find_gaps
from services.ingest.validation import RawCandle, rejections, validate_candle
from shared.db.migrate import alembic_config, upgrade
from shared.db.session import make_engine
from shared.messages import CandleClosed


@pytest.mark.parametrize(
    ("side", "exit_price", "fees", "pnl", "label", "klass"),
    [
        ("BUY", 45_500.0, 0.0, 50.0, 0.011111, "WIN"),  # seed 003: 1.11 %
        ("BUY", 45_000.0, 2.0, -4.0, -0.000889, "NEUTRAL"),
        ("BUY", 44_000.0, 0.0, -100.0, -0.022222, "LOSS"),
        ("SELL", 44_000.0, 1.0, 98.0, 0.021778, "WIN"),
        ("SELL", 45_900.0, 0.0, -90.0, -0.02, "LOSS"),
    ],
)
def test_outcome_after_fees(side: str, exit_price: float, fees: float, pnl: float, label: float, klass: str) -> None:
    outcome = compute_outcome(side=side, entry_price=45_000.0, exit_price=exit_price, quantity=0.1,
                              entry_fee=fees, exit_fee=fees, neutral_band=0.001)
    assert outcome.realized_pnl == pytest.approx(pnl)
    assert outcome.target_label == pytest.approx(label, abs=1e-6)
    assert outcome.target_class == klass


def test_fast_candle_payloads_are_byte_for_byte_the_models_json() -> None:
    candles = [RawCandle(1_767_225_600_000 + i * 60_000, 61_234.12 + i, 61_300.5, 1e-05, 61_240.0, 12.3456789)
               for i in range(3)]
    candles += [  # values whose JSON spelling differs between repr() and pydantic, odd open times
        RawCandle(1_767_225_600_123, 1e16, 1.5e16, 1e-7, 123456789012345680.0, 0.0),
        RawCandle(946_684_800_999, 0.1, 0.30000000000000004, 5e-324, 2.5, 1e300),
        RawCandle(60_000, 3, 4, 2, 3, 7),  # ints, as a CSV import may hand them over
        RawCandle(1_767_225_600_000, 1.0000000000000002, 99999999999999.98, 1e-4, 1.0, -0.0),
    ]
    for source in ("bitvavo", 'csv:"odd" 100% \\ ünïcode'):
        payloads = closed_payloads("BTC-EUR", "1m", candles, source)
        assert len({event_id for _, event_id, _ in payloads}) == len(candles)
        for (key, event_id, raw), candle in zip(payloads, candles, strict=True):
            event = CandleClosed.model_validate_json(raw)
            assert str(event.event_id) == event_id and event.event_id.version == 4
            assert key == f"candle:BTC-EUR:1m:{candle.open_time_ms}"
            reference = _closed_event("BTC-EUR", "1m", candle, source)[1].model_copy(
                update={"event_id": event.event_id, "occurred_at": event.occurred_at})
            assert raw == reference.model_dump_json()
    with pytest.raises(ValueError):
        closed_payloads("btc", "1m", candles, "bitvavo")
    assert closed_payloads("BTC-EUR", "1m", [], "bitvavo") == []


def test_the_fast_page_check_agrees_with_validate_candle() -> None:
    specials = [0.0, -0.0, -1.0, 1e-300, 0.5, 1.0, 2.0, 3.0, math.inf, -math.inf, math.nan]
    rng = random.Random(5)
    candles = [RawCandle(rng.choice([0, 60_000, 60_001, -60_000]), *(rng.choice(specials) for _ in range(5)))
               for _ in range(20_000)]
    candles += [RawCandle(60_000, 2.0, 3.0, 1.0, 2.5, 10.0), RawCandle(120_000, 1.0, 1.0, 1.0, 1.0, 0.0)]
    for interval in (60_000, 0):
        expected = [(c, validate_candle(c, interval)) for c in candles]
        assert rejections(candles, interval) == [(c, reason) for c, reason in expected if reason is not None]
    reasons = {validate_candle(c, 60_000) for c in candles}
    assert None in reasons and len(reasons) == 7  # every verdict is exercised


def test_gaps_lie_between_stored_candles() -> None:
    assert [(g.start_ms, g.end_ms, g.missing) for g in find_gaps([0, 60, 240, 300, 420], 60)] == [
        (120, 240, 2), (360, 420, 1)]
    assert find_gaps([0, 60], 60) == [] and find_gaps([], 60) == []


def test_the_sim_speed_option_runs_a_virtual_clock() -> None:
    wall = iter([100.0, 100.5])
    clock = AcceleratedClock(1_767_225_600.0, 120, wall=lambda: next(wall))
    assert clock() == 1_767_225_600.0 + 60.0
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--speed", "120", "--start", "2026-01-01T00:00:00Z"]))
    assert isinstance(config.clock, AcceleratedClock) and config.clock.speed == 120
    assert config.limit_clock is not None  # rate limits and bans stay on wall time
    with pytest.raises(ValueError):
        config_from_args(parser.parse_args(["--speed", "0"]))


def test_the_ingest_migration_runs_on_sqlite_both_ways(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"

    async def run() -> tuple[set[str], set[str]]:
        engine = make_engine(url)
        await upgrade(engine)
        async with engine.connect() as connection:
            upgraded = set(await connection.run_sync(lambda c: inspect(c).get_table_names()))

        def downgrade(connection: object) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "0002_ingest@-1")

        async with engine.begin() as connection:
            await connection.run_sync(downgrade)
        async with engine.connect() as connection:
            downgraded = set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
        await upgrade(engine)
        await engine.dispose()
        return upgraded, downgraded

    upgraded, downgraded = asyncio.run(run())
    ours = {"ingest_fetch_ledger", "candle_gaps", "trade_events", "account_fills"}
    assert ours <= upgraded and not ours & downgraded and "candles" in downgraded

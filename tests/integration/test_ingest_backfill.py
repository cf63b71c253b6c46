"""Backfill from the simulated exchange through the real SDK client into PostgreSQL + Redis.

Regimes and their fallback, reruns that fetch only the open tail, every injected fault, and a
restart in the middle of a backfill.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest import ledger
from services.ingest.backfill import ExchangeIngestor
from services.ingest.exchange.bitvavo import BitvavoClient, BitvavoClientConfig
from services.ingest.exchange.sim_server import FaultConfig, ManualClock, SimConfig, SimExchange
from services.ingest.handlers import StoreDeps
from services.ingest.locks import SeriesLocks
from services.ingest.metrics import IngestMetrics
from services.ingest.planning import Span, parse_regimes
from services.ingest.repository import recorded_gaps, stored_open_times
from services.ingest.settings import IngestSettings
from services.ingest.validation import RawCandle
from shared.broker import Redis
from shared.messages import CandleClosed
from shared.publishing import EventPublisher
from shared.streams import Stream
from shared.waiting import decode_entry

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

NOW_S = 1_767_225_630.0  # 2026-01-01T00:00:30Z: the 00:00 candle is still forming
MINUTE = 60_000
NOW_MS = int(NOW_S * 1000)
CLOSED_END = NOW_MS - NOW_MS % MINUTE
SIM_ERA_END = datetime(2026, 6, 1, tzinfo=UTC)


def ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)


def make_sim(**overrides: Any) -> SimExchange:
    """A sim on a settable clock; rate limits and bans on wall time so bans can be waited out."""
    config: dict[str, Any] = {
        "seed": 11, "clock": ManualClock(NOW_S), "limit_clock": time.time,
        "markets": ("BTC-EUR", "ETH-EUR", "SOL-EUR"),
    }
    config.update(overrides)
    return SimExchange(SimConfig(**config))


def make_ingestor(
    sim: SimExchange, sessions: async_sessionmaker[AsyncSession], redis: Redis, regimes: Any = None, **settings: Any
) -> ExchangeIngestor:
    values: dict[str, Any] = {"source": "bitvavo", "exchange_url": sim.base_url, "markets": ["BTC-EUR"],
                              "timeframes": ["1m"], "history_candles": 3000}
    values.update(settings)
    client = BitvavoClient(
        BitvavoClientConfig(rest_url=sim.base_url, timeout_s=5, backoff_base_s=0.01, backoff_max_s=0.05,
                            max_retries=8),
        observer=(metrics := IngestMetrics.create(None)),
    )
    return ExchangeIngestor(
        settings=IngestSettings(**values),
        client=client,
        store=StoreDeps(sessions, EventPublisher(redis), metrics),
        locks=SeriesLocks(redis, 10),
        regimes=parse_regimes(regimes or {}),
    )


def expected(sim: SimExchange, market: str, interval: str, span: Span) -> list[RawCandle]:
    """The fault-free candles straight from the sim's Python API."""
    return [
        RawCandle(c.open_time_ms, *(float(Decimal(v)) for v in (c.open, c.high, c.low, c.close, c.volume)))
        for c in sim.candles(market, interval, span.start, span.end)
    ]


async def published(redis: Redis, market: str) -> list[int]:
    """Open times of this test's CandleClosed entries of ``market``, in stream order.

    Other test sessions on the same Redis database may publish synthetic candles of the present day
    meanwhile; the sim's candles are from bitvavo and before 2026-06.
    """
    events = [decode_entry(Stream.CANDLE_CLOSED, fields) for _, fields in await redis.xrange(Stream.CANDLE_CLOSED.value)]
    return [
        int(e.open_time.timestamp() * 1000)
        for e in events
        if isinstance(e, CandleClosed) and e.market == market and e.source == "bitvavo" and e.open_time < SIM_ERA_END
    ]


async def gap_times(sessions: async_sessionmaker[AsyncSession], market: str, interval: str, step: int) -> list[int]:
    return [g.start_ms + i * step for g in await recorded_gaps(sessions, market, interval) for i in range(g.missing)]


async def test_regimes_are_fetched_and_markets_without_data_fall_back_to_the_global_range(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    """Given BTC with two regimes, ETH whose only regime predates its listing, SOL without regimes."""
    regimes = {
        "BTC-EUR": {"calm": [["2025-12-01", "2025-12-03"]], "storm": [{"start": "2025-12-10", "end": "2025-12-11"}]},
        "ETH-EUR": {"before_listing": [["2017-01-01", "2017-02-01"]]},
    }
    with make_sim() as sim:
        ingestor = make_ingestor(
            sim, sessions, redis, regimes, markets=["BTC-EUR", "ETH-EUR", "SOL-EUR"], timeframes=["1h"],
            data_fetch_start_date="2025-12-20", data_fetch_end_date="2025-12-31T12:00:00Z",
        )
        report = await ingestor.run_once()
        assert sim.request_count("/v2/time") == 1

    by_market = {r.market: r for r in report.series}
    calm, storm = Span(ms("2025-12-01"), ms("2025-12-03")), Span(ms("2025-12-10"), ms("2025-12-11"))
    global_range = Span(ms("2025-12-20"), ms("2025-12-31T12:00"))
    btc = [c.open_time_ms for span in (calm, storm) for c in expected(sim, "BTC-EUR", "1h", span)]
    assert await stored_open_times(sessions, "BTC-EUR", "1h") == btc
    assert not by_market["BTC-EUR"].used_fallback
    for market in ("ETH-EUR", "SOL-EUR"):
        assert await stored_open_times(sessions, market, "1h") == [
            c.open_time_ms for c in expected(sim, market, "1h", global_range)
        ]
    assert by_market["ETH-EUR"].used_fallback and not by_market["SOL-EUR"].used_fallback
    assert await ledger.covered(sessions, "BTC-EUR", "1h") == [calm, storm]
    assert await ledger.covered(sessions, "ETH-EUR", "1h") == [Span(ms("2017-01-01"), ms("2017-02-01")), global_range]
    assert sorted(await published(redis, "BTC-EUR")) == btc


async def test_a_rerun_fetches_only_the_open_tail_and_never_the_forming_candle(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    with make_sim() as sim:
        ingestor = make_ingestor(sim, sessions, redis, history_candles=3000)
        first = await ingestor.run_once()
        assert first.series[0].pages == math.ceil(3000 / 1440)
        stored = await stored_open_times(sessions, "BTC-EUR", "1m")
        assert stored[-1] == CLOSED_END - MINUTE  # the 00:00 candle is forming: not stored

        sim.reset_stats()
        await ingestor.run_once()  # nothing new closed
        assert sim.request_count("/v2/BTC-EUR/candles") == 0

        for new in (2000, 1440, 5000, 7):  # 5000 > history_candles: a long pause leaves no hole
            assert isinstance(sim.config.clock, ManualClock)
            sim.config.clock.advance(new * 60)
            sim.reset_stats()
            await ingestor.run_once()
            assert sim.request_count("/v2/BTC-EUR/candles") == math.ceil(new / 1440), new

        end = CLOSED_END + (2000 + 1440 + 5000 + 7) * MINUTE
        whole = Span(CLOSED_END - 3000 * MINUTE, end)
        assert await stored_open_times(sessions, "BTC-EUR", "1m") == [
            c.open_time_ms for c in expected(sim, "BTC-EUR", "1m", whole)]
        assert sorted(await published(redis, "BTC-EUR")) == await stored_open_times(sessions, "BTC-EUR", "1m")
        assert await ledger.covered(sessions, "BTC-EUR", "1m") == [whole]


FAULT_CASES = {
    "queued": ({"forced_ban_s": 0.3}, ["5xx", "html", "truncate", "duplicate", "ban", "truncate", "5xx", "duplicate"]),
    "random": ({"error_5xx_rate": 0.15, "html_502_rate": 0.1, "truncate_rate": 0.4, "duplicate_rate": 0.5}, []),
}


@pytest.mark.parametrize("case", sorted(FAULT_CASES))
async def test_every_injected_fault_ends_in_a_complete_duplicate_free_series_with_its_gaps(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, case: str
) -> None:
    """Given bans, 5xx, HTML 502s, duplicated rows, truncated pages and real gaps (no trades)."""
    faults, queue = FAULT_CASES[case]
    with make_sim(gap_rate=0.01, faults=FaultConfig(**faults), fault_seed=5) as sim:
        sim.queue_faults(*queue)
        ingestor = make_ingestor(sim, sessions, redis, history_candles=7000)
        await ingestor.run_once()
        stats = sim.stats()

    window = Span(CLOSED_END - 7000 * MINUTE, CLOSED_END)
    truth = [c.open_time_ms for c in expected(sim, "BTC-EUR", "1m", window)]
    assert await stored_open_times(sessions, "BTC-EUR", "1m") == truth
    events = await published(redis, "BTC-EUR")
    assert len(events) == len(set(events)) and sorted(events) == truth
    assert await gap_times(sessions, "BTC-EUR", "1m", MINUTE) == sim.gaps("BTC-EUR", "1m", truth[0], truth[-1])
    assert len(sim.gaps("BTC-EUR", "1m", truth[0], truth[-1])) > 20
    assert stats["faults"].get("truncate", 0) >= 2 and stats["faults"].get("duplicate", 0) >= 1
    metrics = ingestor.store.metrics

    def requests(status: str) -> float:
        return sum(metrics.exchange_requests.labels(e, status)._value.get() for e in ("time", "candles"))

    if case == "queued":
        assert stats["bans_issued"] == 1 and metrics.bans._value.get() == 1
        assert requests("bad_response") == 1 and requests("server_error") == 2 and requests("banned") == 1
    assert requests("server_error") >= 1 and requests("ok") == stats["statuses"]["200"]
    assert metrics.gaps.labels("BTC-EUR", "1m")._value.get() == len(sim.gaps("BTC-EUR", "1m", truth[0], truth[-1]))


class Crash(Exception):
    """The process dies here."""


async def test_a_restart_in_the_middle_of_a_backfill_resumes_from_the_ledger(
    sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    with make_sim(gap_rate=0.005) as sim:
        crashing = make_ingestor(sim, sessions, redis, history_candles=10 * 1440)
        fetch_page = crashing.fetch_page
        calls = 0

        async def fetch_then_crash(market: str, timeframe: str, window: Span) -> list[RawCandle]:
            nonlocal calls
            calls += 1
            if calls == 5:
                raise Crash("killed while fetching page 5")
            return await fetch_page(market, timeframe, window)

        crashing.fetch_page = fetch_then_crash  # type: ignore[method-assign]
        with pytest.raises(Crash):
            await crashing.run_once()
        done = await ledger.covered(sessions, "BTC-EUR", "1m")
        assert done == [Span(CLOSED_END - 4 * 1440 * MINUTE, CLOSED_END)]  # the 4 newest pages

        sim.reset_stats()
        restarted = make_ingestor(sim, sessions, redis, history_candles=10 * 1440)
        await restarted.run_once()
        assert sim.request_count("/v2/BTC-EUR/candles") == 6

    whole = Span(CLOSED_END - 10 * 1440 * MINUTE, CLOSED_END)
    truth = [c.open_time_ms for c in expected(sim, "BTC-EUR", "1m", whole)]
    assert await stored_open_times(sessions, "BTC-EUR", "1m") == truth
    events = await published(redis, "BTC-EUR")
    assert len(events) == len(truth) and sorted(events) == truth
    assert await gap_times(sessions, "BTC-EUR", "1m", MINUTE) == sim.gaps("BTC-EUR", "1m", truth[0], truth[-1])
    assert await ledger.covered(sessions, "BTC-EUR", "1m") == [whole]

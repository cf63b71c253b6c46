"""The asyncio Bitvavo client against the simulated exchange (no Redis, no PostgreSQL)."""

from __future__ import annotations

import math
import threading
import time
from decimal import Decimal
from typing import Any

import pytest
from python_bitvavo_api.bitvavo import rateLimitThread

from services.ingest.exchange.bitvavo import (
    BitvavoApiError,
    BitvavoAuthRequiredError,
    BitvavoBannedError,
    BitvavoClient,
    BitvavoClientConfig,
    BitvavoResponseError,
    BitvavoUnavailableError,
    RawCandle,
    parse_ban_expiry_ms,
    parse_candles,
    validate_candle,
)
from services.ingest.exchange.sim_server import FaultConfig, ManualClock, SimConfig, SimExchange, SimFill

NOW_S = 1_767_225_630.0  # 2026-01-01T00:00:30Z
MINUTE = 60_000
HOUR = 3_600_000
END = 1_767_225_600_000 - 10 * MINUTE  # well in the past of NOW_S


def make_sim(**overrides: Any) -> SimExchange:
    """A simulated exchange with a frozen clock and seed 7 unless overridden."""
    settings: dict[str, Any] = {"seed": 7, "clock": ManualClock(NOW_S), "gap_rate": 0.0}
    settings.update(overrides)
    return SimExchange(SimConfig(**settings))


def make_client(sim: SimExchange, **overrides: Any) -> BitvavoClient:
    """A client for ``sim`` with short timeouts and backoff."""
    settings: dict[str, Any] = {
        "rest_url": sim.base_url,
        "timeout_s": 2.0,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
    }
    settings.update(overrides)
    return BitvavoClient(BitvavoClientConfig(**settings))


def expected(sim: SimExchange, market: str, interval: str, start_ms: int, end_ms: int) -> list[RawCandle]:
    """The fault-free series straight from the sim's Python API."""
    return [
        RawCandle(
            candle.open_time_ms,
            *(float(Decimal(value)) for value in (candle.open, candle.high, candle.low, candle.close, candle.volume)),
        )
        for candle in sim.candles(market, interval, start_ms, end_ms)
    ]


@pytest.mark.asyncio(loop_scope="session")
async def test_fetch_candles_parses_sorts_and_matches_the_sim() -> None:
    start = END - 500 * MINUTE
    with make_sim(gap_rate=0.01) as sim:
        client = make_client(sim)
        candles = await client.fetch_candles("BTC-EUR", "1m", start, END)
        assert candles == expected(sim, "BTC-EUR", "1m", start, END)
        assert [candle.open_time_ms for candle in candles] == sorted({candle.open_time_ms for candle in candles})
        assert all(validate_candle(candle, MINUTE) is None for candle in candles)
        assert client.counters.requests == 1


@pytest.mark.asyncio(loop_scope="session")
async def test_fetch_candles_drops_duplicates_and_keeps_to_the_range() -> None:
    with make_sim() as sim:
        client = make_client(sim)
        sim.queue_faults("duplicate")
        candles = await client.fetch_candles("BTC-EUR", "1m", END - 100 * MINUTE, END)
        assert candles == expected(sim, "BTC-EUR", "1m", END - 100 * MINUTE, END)
        assert client.counters.duplicates_dropped >= 1
        unaligned = await client.fetch_candles("BTC-EUR", "1h", END - 5 * HOUR - 1, END - HOUR + 1)
        assert [candle.open_time_ms % HOUR for candle in unaligned] == [0] * 4
        assert unaligned[0].open_time_ms >= END - 5 * HOUR - 1 and unaligned[-1].open_time_ms <= END - HOUR
    with make_sim(end_inclusive=True) as sim:
        candles = await make_client(sim).fetch_candles("BTC-EUR", "1m", END - 10 * MINUTE, END)
        assert len(candles) == 10 and candles[-1].open_time_ms == END - MINUTE


@pytest.mark.parametrize("count", [1, 1440, 1441, 3000, 4320])
@pytest.mark.asyncio(loop_scope="session")
async def test_fetching_n_candles_takes_ceil_n_over_1440_requests(count: int) -> None:
    with make_sim(gap_rate=0.0) as sim:
        client = make_client(sim)
        candles = await client.collect_range("BTC-EUR", "1m", END - count * MINUTE, END)
        assert len(candles) == count
        assert sim.request_count("/v2/BTC-EUR/candles") == client.counters.requests == math.ceil(count / 1440)


@pytest.mark.asyncio(loop_scope="session")
async def test_fetch_range_pages_backwards_and_keeps_real_gaps() -> None:
    start = END - 4000 * MINUTE
    with make_sim(gap_rate=0.02) as sim:
        client = make_client(sim)
        pages = [page async for page in client.fetch_range("BTC-EUR", "1m", start, END)]
        assert [page[0].open_time_ms for page in pages] == sorted(
            (page[0].open_time_ms for page in pages), reverse=True
        )
        series = [candle for page in reversed(pages) for candle in page]
        assert series == expected(sim, "BTC-EUR", "1m", start, END)
        stamps = {candle.open_time_ms for candle in series}
        assert stamps.isdisjoint(sim.gaps("BTC-EUR", "1m", start, END))  # gaps are never filled in
        assert client.counters.candles_recovered == 0
        assert client.counters.requests <= 2 * math.ceil(4000 / 1440)  # at most one gap check per page


@pytest.mark.parametrize(
    ("faults", "evidence"),
    [
        (FaultConfig(error_5xx_rate=0.4), "retries"),
        (FaultConfig(html_502_rate=0.4), "retries"),
        (FaultConfig(truncate_rate=0.6), "requests"),
        (FaultConfig(duplicate_rate=0.6), "duplicates_dropped"),
        (FaultConfig(missing_rate=0.6), "candles_recovered"),
        (
            FaultConfig(error_5xx_rate=0.2, html_502_rate=0.2, truncate_rate=0.3, duplicate_rate=0.3, missing_rate=0.3),
            "retries",
        ),
    ],
    ids=["5xx", "non-json", "truncated", "duplicates", "missing", "everything"],
)
@pytest.mark.asyncio(loop_scope="session")
async def test_every_fault_ends_in_the_fault_free_series(faults: FaultConfig, evidence: str) -> None:
    start = END - 5000 * MINUTE
    with make_sim(gap_rate=0.01, faults=faults, fault_seed=11) as sim:
        wanted = expected(sim, "BTC-EUR", "1m", start, END)
        client = make_client(sim)
        series = await client.collect_range("BTC-EUR", "1m", start, END)
        assert series == wanted
        assert len({candle.open_time_ms for candle in series}) == len(series)
        assert sim.stats()["faults"], "the faults were injected"
        floor = 2 * math.ceil(5000 / 1440) if evidence == "requests" else 0  # pages plus gap checks
        assert getattr(client.counters, evidence) > floor, client.counters


@pytest.mark.asyncio(loop_scope="session")
async def test_timeouts_are_retried() -> None:
    with make_sim(faults=FaultConfig(latency_s=1.0)) as sim:
        client = make_client(sim, timeout_s=0.2)
        sim.queue_faults("latency")
        assert await client.server_time() == int(NOW_S * 1000)
        assert client.counters.retries == 1 and client.counters.requests == 2


@pytest.mark.asyncio(loop_scope="session")
async def test_a_ban_is_waited_out_once_without_hammering() -> None:
    with SimExchange(SimConfig(seed=7, gap_rate=0.0)) as sim:
        client = make_client(sim)
        sim.force_ban(0.5)
        began = time.monotonic()
        candles = await client.fetch_candles("BTC-EUR", "1m", None, None, limit=10)
        assert len(candles) == 10
        assert time.monotonic() - began >= 0.45
        assert client.counters.bans_waited == 1
        assert sim.stats()["statuses"] == {"429": 1, "200": 1}


@pytest.mark.asyncio(loop_scope="session")
async def test_an_injected_rate_limit_ban_is_waited_out() -> None:
    with SimExchange(SimConfig(seed=7, faults=FaultConfig(forced_ban_s=0.3))) as sim:
        client = make_client(sim)
        sim.queue_faults("ban")
        await client.server_time()
        assert client.counters.bans_waited == 1 and sim.request_count() == 2


@pytest.mark.asyncio(loop_scope="session")
async def test_a_ban_longer_than_allowed_is_raised_at_once() -> None:
    with SimExchange(SimConfig(seed=7)) as sim:
        expiry = sim.force_ban(120)
        client = make_client(sim, max_ban_wait_s=5)
        with pytest.raises(BitvavoBannedError) as raised:
            await client.server_time()
        assert raised.value.expiry_ms == expiry
        assert sim.request_count() == 1


@pytest.mark.asyncio(loop_scope="session")
async def test_the_client_never_exceeds_its_budget() -> None:
    with SimExchange(SimConfig(seed=7, rate_limit=6, rate_window_s=0.5, ban_s=30)) as sim:
        client = make_client(sim, rate_limit=6, rate_window_s=0.5, rate_reserve=0)
        began = time.monotonic()
        for _ in range(15):
            await client.server_time()
        assert time.monotonic() - began >= 1.0  # 15 requests at 6 per 0.5 s
        assert sim.stats()["bans_issued"] == 0 and "429" not in sim.stats()["statuses"]
        assert client.counters.rate_limit_waits >= 2


@pytest.mark.asyncio(loop_scope="session")
async def test_the_server_headers_are_respected_when_its_limit_is_lower() -> None:
    with SimExchange(SimConfig(seed=7, rate_limit=4, rate_window_s=0.4, ban_s=30)) as sim:
        client = make_client(sim)  # believes in the default 1000 per minute
        for _ in range(10):
            await client.server_time()
        assert sim.stats()["bans_issued"] == 0
        assert client.counters.rate_limit_waits >= 2


@pytest.mark.asyncio(loop_scope="session")
async def test_permanent_errors_are_raised_without_retrying() -> None:
    with make_sim() as sim:
        client = make_client(sim)
        with pytest.raises(BitvavoApiError) as raised:
            await client.fetch_candles("NOPE-EUR", "1m", None, None)
        assert raised.value.code == 205
        assert client.counters.retries == 0 and sim.request_count() == 1


@pytest.mark.asyncio(loop_scope="session")
async def test_retries_are_bounded() -> None:
    with make_sim(faults=FaultConfig(error_5xx_rate=1.0)) as sim:
        client = make_client(sim, max_retries=2)
        with pytest.raises(BitvavoUnavailableError, match="errorCode 101"):
            await client.server_time()
        assert sim.request_count() == 3 and client.counters.retries == 2


@pytest.mark.asyncio(loop_scope="session")
async def test_server_time_markets_and_trades() -> None:
    fills = (SimFill("BTC-EUR", "buy", "0.01", "60000", 1_767_000_000_000),)
    with make_sim(api_key="k" * 64, api_secret="s3cret", fills=fills) as sim:
        public = make_client(sim)
        assert await public.server_time() == int(NOW_S * 1000)
        assert [market["market"] for market in await public.markets()] == ["BTC-EUR", "ETH-EUR"]
        assert [market["market"] for market in await public.markets("ETH-EUR")] == ["ETH-EUR"]
        with pytest.raises(BitvavoAuthRequiredError):
            await public.trades("BTC-EUR")
        assert sim.request_count("/v2/trades") == 0
        signed = make_client(sim, api_key="k" * 64, api_secret="s3cret")
        trades = await signed.trades("BTC-EUR", limit=10)
        assert [(trade["side"], trade["price"]) for trade in trades] == [("buy", "60000")]
        assert not any(isinstance(thread, rateLimitThread) for thread in threading.enumerate())


@pytest.mark.asyncio(loop_scope="session")
async def test_newly_closed_candles_show_up() -> None:
    clock = ManualClock(NOW_S)
    with make_sim(clock=clock) as sim:
        client = make_client(sim)
        before = await client.fetch_candles("BTC-EUR", "1h", None, None, limit=3)
        clock.advance(3600)
        after = await client.fetch_candles("BTC-EUR", "1h", None, None, limit=3)
        assert after[:2] == before[1:] and after[2].open_time_ms == before[2].open_time_ms + HOUR


@pytest.mark.asyncio(loop_scope="session")
async def test_an_end_inclusive_server_gives_the_same_series() -> None:
    start = END - 3000 * MINUTE
    with make_sim(gap_rate=0.01, end_inclusive=True) as sim:
        assert await make_client(sim).collect_range("BTC-EUR", "1m", start, END) == expected(
            sim, "BTC-EUR", "1m", start, END
        )


GOOD = RawCandle(1_767_225_600_000, 100.0, 110.0, 95.0, 105.0, 3.0)


@pytest.mark.parametrize(
    ("candle", "reason"),
    [
        (GOOD, None),
        (RawCandle(GOOD.open_time_ms, 100.0, 100.0, 100.0, 100.0, 0.0), None),
        (RawCandle(GOOD.open_time_ms, 100.0, 104.0, 95.0, 105.0, 3.0), "high below open/close"),
        (RawCandle(GOOD.open_time_ms, 100.0, 110.0, 101.0, 105.0, 3.0), "low above open/close"),
        (RawCandle(GOOD.open_time_ms, 100.0, 110.0, 95.0, 105.0, -1.0), "negative volume"),
        (RawCandle(GOOD.open_time_ms, 0.0, 110.0, 0.0, 105.0, 3.0), "non-positive price"),
        (RawCandle(GOOD.open_time_ms, 100.0, 110.0, -5.0, 105.0, 3.0), "non-positive price"),
        (RawCandle(GOOD.open_time_ms, 100.0, float("nan"), 95.0, 105.0, 3.0), "non-finite value"),
        (RawCandle(GOOD.open_time_ms + MINUTE, 100.0, 110.0, 95.0, 105.0, 3.0), "not aligned"),
    ],
)
def test_validate_candle(candle: RawCandle, reason: str | None) -> None:
    found = validate_candle(candle, HOUR)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found


def test_parsing_helpers() -> None:
    assert parse_candles([[60_000, "1.5", "2", "1", "1.75", "0.1"]]) == [RawCandle(60_000, 1.5, 2.0, 1.0, 1.75, 0.1)]
    with pytest.raises(BitvavoResponseError):
        parse_candles([[60_000, "1.5", "x", "1", "1.75", "0.1"]])
    with pytest.raises(BitvavoResponseError):
        parse_candles({"time": 1})
    rows = [[120_000, "2.5", "3", "2", "2.75", "0.2", "extra"], [60_000, "1.5", "2", "1", "1.75", "0.1"]]
    assert parse_candles(rows) == parse_candles([tuple(row) for row in rows]) == [  # fast path and careful path
        RawCandle(120_000, 2.5, 3.0, 2.0, 2.75, 0.2), RawCandle(60_000, 1.5, 2.0, 1.0, 1.75, 0.1)]
    for bad in ([*rows, "123456"], [*rows, [60_000, "1"]], [*rows, [60_000, None, "2", "1", "1", "1"]]):
        with pytest.raises(BitvavoResponseError):
            parse_candles(bad)
    message = "Your IP or API key has been banned for not respecting the rate limit. The ban expires at 1767225690000."
    assert parse_ban_expiry_ms(message) == 1_767_225_690_000
    assert parse_ban_expiry_ms("Invalid endpoint. Please check url and HTTP method.") is None

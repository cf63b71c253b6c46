"""The simulated Bitvavo server, exercised through the real python-bitvavo-api SDK and plain HTTP."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import time
from decimal import Decimal
from typing import Any

import pytest
import requests
from python_bitvavo_api.bitvavo import Bitvavo

from services.ingest.exchange.sim_server import (
    BAN_MESSAGE,
    CHUNK_CANDLES,
    FaultConfig,
    ManualClock,
    PatternKind,
    Regime,
    SimConfig,
    SimExchange,
    SimFill,
)

NOW_S = 1_767_225_630.0  # 2026-01-01T00:00:30Z
MINUTE = 60_000
HOUR = 3_600_000
LAST_CLOSED_MINUTE = 1_767_225_600_000 - MINUTE


def make_sim(**overrides: Any) -> SimExchange:
    """A simulated exchange with a frozen clock, no gaps and seed 7 unless overridden."""
    settings: dict[str, Any] = {"seed": 7, "clock": ManualClock(NOW_S), "gap_rate": 0.0}
    settings.update(overrides)
    return SimExchange(SimConfig(**settings))


def sdk(url: str, **options: Any) -> Bitvavo:
    """The real SDK pointed at the sim; its rate-limit thread is kept from starting (SDK bug)."""
    client = Bitvavo({"RESTURL": url, "TIMEOUT": 5, **options})
    client.rateLimitThread = None
    return client


def decimal_row(row: list[Any]) -> tuple[int, Decimal, Decimal, Decimal, Decimal, Decimal]:
    return (row[0], *(Decimal(value) for value in row[1:]))  # type: ignore[return-value]


def test_time_and_markets_have_bitvavo_shapes() -> None:
    with make_sim(markets=("BTC-EUR", "ETH-EUR")) as sim:
        client = sdk(sim.base_url)
        now = client.time()
        assert now == {"time": int(NOW_S * 1000), "timeNs": int(NOW_S * 1_000_000_000)}
        markets = client.markets({})
        assert [market["market"] for market in markets] == ["BTC-EUR", "ETH-EUR"]
        for market in markets:
            assert market["status"] == "trading"
            assert market["pricePrecision"] is None
            assert Decimal(market["tickSize"]) > 0
            assert {"base", "quote", "minOrderInBaseAsset", "minOrderInQuoteAsset", "orderTypes"} <= set(market)
        assert client.markets({"market": "ETH-EUR"})["base"] == "ETH"


def test_candles_are_newest_first_closed_and_well_formed() -> None:
    with make_sim() as sim:
        client = sdk(sim.base_url)
        rows = client.candles("BTC-EUR", "1m", {"limit": 100})
        assert len(rows) == 100
        assert rows[0][0] == LAST_CLOSED_MINUTE  # the forming candle is never served
        stamps = [row[0] for row in rows]
        assert stamps == sorted(stamps, reverse=True)
        assert all(earlier - later == MINUTE for earlier, later in itertools.pairwise(stamps))
        for row in rows:
            assert isinstance(row[0], int) and all(isinstance(value, str) for value in row[1:])
            _, open_, high, low, close, volume = decimal_row(row)
            assert high >= max(open_, close) and low <= min(open_, close) and low > 0 and volume > 0
        assert len(client.candles("BTC-EUR", "1m", {})) == 1440


def test_start_is_inclusive_and_end_exclusive_unless_configured() -> None:
    start = LAST_CLOSED_MINUTE - 100 * MINUTE
    options = {"start": start, "end": start + 10 * MINUTE}
    with make_sim() as sim:
        rows = sdk(sim.base_url).candles("BTC-EUR", "1m", dict(options))
        assert [row[0] for row in rows][::-1] == [start + index * MINUTE for index in range(10)]
    with make_sim(end_inclusive=True) as sim:
        rows = sdk(sim.base_url).candles("BTC-EUR", "1m", dict(options))
        assert rows[0][0] == start + 10 * MINUTE and len(rows) == 11


def test_a_new_candle_appears_only_when_it_closes() -> None:
    clock = ManualClock(NOW_S)
    with make_sim(clock=clock) as sim:
        client = sdk(sim.base_url)
        before = client.candles("BTC-EUR", "1m", {"limit": 5})
        clock.advance(29)  # 00:00:59: the 00:00 candle is still forming
        assert client.candles("BTC-EUR", "1m", {"limit": 5}) == before
        clock.advance(1)
        after = client.candles("BTC-EUR", "1m", {"limit": 5})
        assert after[0][0] == LAST_CLOSED_MINUTE + MINUTE
        assert after[1:] == before[:4]


def test_candles_are_deterministic_across_overlapping_ranges_and_instances() -> None:
    chunk_edge = (LAST_CLOSED_MINUTE // MINUTE // CHUNK_CANDLES - 1) * CHUNK_CANDLES * MINUTE
    first = {"start": chunk_edge - 1000 * MINUTE, "end": chunk_edge + 440 * MINUTE}
    second = {"start": chunk_edge - 300 * MINUTE, "end": chunk_edge + 500 * MINUTE, "limit": 700}
    with make_sim(gap_rate=0.01) as sim, make_sim(gap_rate=0.01) as twin, make_sim(seed=8) as other:
        one = {row[0]: row for row in sdk(sim.base_url).candles("BTC-EUR", "1m", dict(first))}
        two = {row[0]: row for row in sdk(sim.base_url).candles("BTC-EUR", "1m", dict(second))}
        overlap = one.keys() & two.keys()
        assert len(overlap) > 600 and min(overlap) < chunk_edge < max(overlap)
        assert all(one[stamp] == two[stamp] for stamp in overlap)
        assert sdk(twin.base_url).candles("BTC-EUR", "1m", dict(first)) == sorted(one.values(), reverse=True)
        different = sdk(other.base_url).candles("BTC-EUR", "1m", dict(first))
        assert different != sorted(one.values(), reverse=True)


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/BTC-EUR/candles", 400, 203),
        ("/BTC-EUR/candles?interval=7m", 400, 205),
        ("/BTC-EUR/candles?interval=1m&limit=0", 400, 205),
        ("/BTC-EUR/candles?interval=1m&limit=1441", 400, 205),
        ("/BTC-EUR/candles?interval=1m&limit=ten", 400, 205),
        ("/BTC-EUR/candles?interval=1h&start=1767225600001", 400, 205),
        ("/BTC-EUR/candles?interval=1m&colour=red", 400, 204),
        ("/NOPE-EUR/candles?interval=1m", 400, 205),
        ("/markets?market=NOPE-EUR", 400, 205),
        ("/no/such/endpoint", 404, 110),
    ],
)
def test_bad_requests_get_bitvavo_error_dicts(path: str, status: int, code: int) -> None:
    with make_sim() as sim:
        response = requests.get(sim.base_url + path, timeout=5)
        assert response.status_code == status
        body = response.json()
        assert body["errorCode"] == code and isinstance(body["error"], str)
        assert "bitvavo-ratelimit-remaining" in response.headers


def test_rate_limit_headers_and_the_ban_the_sdk_can_parse() -> None:
    clock = ManualClock(NOW_S)
    with make_sim(clock=clock, rate_limit=3, rate_window_s=60, ban_s=30) as sim:
        url = sim.base_url + "/time"
        for expected_remaining in (2, 1, 0):
            response = requests.get(url, timeout=5)
            assert response.status_code == 200
            assert response.headers["bitvavo-ratelimit-remaining"] == str(expected_remaining)
            assert response.headers["bitvavo-ratelimit-limit"] == "3"
            assert response.headers["bitvavo-ratelimit-resetat"] == str(int((NOW_S + 60) * 1000))
        client = sdk(sim.base_url)
        banned = client.time()
        expiry = int((NOW_S + 30) * 1000)
        assert banned == {"errorCode": 105, "error": BAN_MESSAGE.format(expiry_ms=expiry)}
        assert re.fullmatch(
            r"Your IP or API key has been banned for not respecting the rate limit\. "
            r"The ban expires at \d+\.",
            banned["error"],
        )
        assert client.rateLimitRemaining == 0 and client.rateLimitReset == expiry  # parsed by the SDK
        again = requests.get(url, timeout=5)
        assert again.status_code == 429 and again.json()["error"] == banned["error"]
        clock.advance(31)
        assert requests.get(url, timeout=5).status_code == 200
        assert sim.stats()["bans_issued"] == 1


def test_force_ban_expires_on_the_real_clock() -> None:
    with SimExchange(SimConfig(seed=7)) as sim:
        expiry = sim.force_ban(0.3)
        banned = requests.get(sim.base_url + "/time", timeout=5)
        assert banned.status_code == 429 and banned.json()["error"].endswith(f"at {expiry}.")
        time.sleep(0.35)
        assert requests.get(sim.base_url + "/time", timeout=5).status_code == 200


def test_planted_patterns_are_where_the_sim_says() -> None:
    end = LAST_CLOSED_MINUTE // HOUR * HOUR
    start = end - 180 * 24 * HOUR
    with make_sim(gap_rate=0.05) as sim:
        patterns = sim.patterns("BTC-EUR", "1h", start, end)
        kinds = {pattern.kind for pattern in patterns}
        assert kinds == {PatternKind.BULL_FLAG, PatternKind.BEARISH_ENGULFING}
        candles = {candle.open_time_ms: candle for candle in sim.candles("BTC-EUR", "1h", start, end)}
        for pattern in patterns:
            span = [candles[stamp] for stamp in range(pattern.first_open_ms, pattern.last_open_ms + HOUR, HOUR)]
            signal = (pattern.signal_open_ms - pattern.first_open_ms) // HOUR
            opens = [Decimal(candle.open) for candle in span]
            closes = [Decimal(candle.close) for candle in span]
            if pattern.kind is PatternKind.BEARISH_ENGULFING:
                assert closes[signal - 1] > opens[signal - 1]  # bullish candle
                assert closes[signal] < opens[signal]  # then a bearish one
                assert opens[signal] >= closes[signal - 1] and closes[signal] < opens[signal - 1]
            else:
                pole, flag = range(6), range(6, 13)
                assert all(closes[index] > opens[index] for index in pole)
                midpoint = (opens[0] + closes[5]) / 2
                assert all(min(opens[index], closes[index]) > midpoint for index in flag)
                assert closes[6 + 6] < closes[5]  # the flag drifts down
                assert closes[signal] > max(max(opens[index], closes[index]) for index in flag)


def test_regimes_cover_trend_range_and_high_volatility() -> None:
    with make_sim() as sim:
        base = (LAST_CLOSED_MINUTE // HOUR // CHUNK_CANDLES - 3) * CHUNK_CANDLES * HOUR
        regimes = [sim.regime_at("BTC-EUR", "1h", base + index * HOUR) for index in range(3 * CHUNK_CANDLES)]
        assert set(regimes) == set(Regime)
        returns: dict[Regime, list[float]] = {regime: [] for regime in Regime}
        for candle in sim.candles("BTC-EUR", "1h", base, base + 3 * CHUNK_CANDLES * HOUR):
            move = abs(float(Decimal(candle.close)) / float(Decimal(candle.open)) - 1)
            returns[regimes[(candle.open_time_ms - base) // HOUR]].append(move)
        average = {regime: sum(moves) / len(moves) for regime, moves in returns.items()}
        assert average[Regime.HIGH_VOLATILITY] > 2 * average[Regime.RANGE]


def test_gaps_are_reported_and_never_served() -> None:
    start = LAST_CLOSED_MINUTE - 3000 * MINUTE
    with make_sim(gap_rate=0.05) as sim:
        gaps = set(sim.gaps("BTC-EUR", "1m", start, LAST_CLOSED_MINUTE + MINUTE))
        served = {candle.open_time_ms for candle in sim.candles("BTC-EUR", "1m", start, LAST_CLOSED_MINUTE + MINUTE)}
        assert 80 < len(gaps) < 230
        assert served.isdisjoint(gaps)
        assert served | gaps == set(range(start, LAST_CLOSED_MINUTE + MINUTE, MINUTE))
        for pattern in sim.patterns("BTC-EUR", "1m", start, LAST_CLOSED_MINUTE):
            assert all(stamp not in gaps for stamp in range(pattern.first_open_ms, pattern.last_open_ms + 1, MINUTE))


def test_faults_are_set_through_the_admin_endpoint_and_counted() -> None:
    with make_sim() as sim:
        admin = sim.base_url.removesuffix("/v2") + "/_sim"
        candles = sim.base_url + "/BTC-EUR/candles?interval=1m&limit=50"
        state = requests.post(admin + "/faults", json={"error_5xx_rate": 1.0}, timeout=5).json()
        assert state["faults"]["error_5xx_rate"] == 1.0 and sim.faults.error_5xx_rate == 1.0
        failed = requests.get(candles, timeout=5)
        assert failed.status_code == 500 and failed.json()["errorCode"] == 101

        requests.post(admin + "/faults", json={"reset": True, "html_502_rate": 1.0}, timeout=5)
        proxy = requests.get(candles, timeout=5)
        assert proxy.status_code == 502 and proxy.headers["Content-Type"] == "text/html"
        with pytest.raises(requests.exceptions.JSONDecodeError):
            sdk(sim.base_url).candles("BTC-EUR", "1m", {"limit": 50})

        requests.post(admin + "/faults", json={"reset": True, "queue": ["truncate", "duplicate"]}, timeout=5)
        truncated = requests.get(candles, timeout=5).json()
        assert 1 <= len(truncated) < 50
        duplicated = [row[0] for row in requests.get(candles, timeout=5).json()]
        assert len(duplicated) > len(set(duplicated)) == 50
        clean = [row[0] for row in requests.get(candles, timeout=5).json()]
        sim.queue_faults("missing")
        missing = [row[0] for row in requests.get(candles, timeout=5).json()]
        assert 47 <= len(missing) < 50 and missing[0] == clean[0] and set(missing) < set(clean)

        requests.post(admin + "/faults", json={"latency_s": 0.3, "queue": ["latency"]}, timeout=5)
        began = time.monotonic()
        assert requests.get(candles, timeout=5).status_code == 200
        assert time.monotonic() - began >= 0.3

        refused = requests.post(admin + "/faults", json={"colour": "red"}, timeout=5)
        assert refused.status_code == 400 and refused.json()["errorCode"] == 204
        stats = requests.get(admin + "/stats", timeout=5).json()
        assert stats["requests"]["/v2/BTC-EUR/candles"] == sim.request_count("/v2/BTC-EUR/candles") == 8
        assert stats["faults"] == {"error_5xx": 1, "html": 2, "truncate": 1, "duplicate": 1, "missing": 1, "latency": 1}


def test_fault_decisions_follow_the_fault_seed() -> None:
    faults = FaultConfig(error_5xx_rate=0.3, truncate_rate=0.3, duplicate_rate=0.3, missing_rate=0.3)

    def outcomes(fault_seed: int) -> list[tuple[int, int]]:
        with make_sim(faults=faults, fault_seed=fault_seed) as sim:
            url = sim.base_url + "/BTC-EUR/candles?interval=1m&limit=100"
            return [
                (reply.status_code, len(reply.content)) for reply in (requests.get(url, timeout=5) for _ in range(15))
            ]

    assert outcomes(3) == outcomes(3)
    assert outcomes(3) != outcomes(4)


def test_set_faults_is_validated() -> None:
    with make_sim() as sim:
        with pytest.raises(ValueError, match="within"):
            sim.set_faults(missing_rate=1.5)
        with pytest.raises(ValueError, match="unknown fault"):
            sim.queue_faults("earthquake")
        assert sim.set_faults(FaultConfig(latency_s=0.1), latency_rate=0.5).latency_rate == 0.5
        sim.clear_faults()
        assert sim.faults == FaultConfig()


def test_trades_need_a_valid_signature() -> None:
    fills = (
        SimFill("BTC-EUR", "buy", "0.01", "60000", 1_767_000_000_000),
        SimFill("BTC-EUR", "sell", "0.01", "61000", 1_767_100_000_000),
        SimFill("ETH-EUR", "buy", "1", "3000", 1_767_050_000_000),
    )
    with make_sim(api_key="k" * 64, api_secret="s3cret", fills=fills) as sim:
        signed = sdk(sim.base_url, APIKEY="k" * 64, APISECRET="s3cret").trades("BTC-EUR", {})
        assert [fill["side"] for fill in signed] == ["sell", "buy"]  # newest first
        assert {"id", "orderId", "timestamp", "market", "amount", "price", "fee", "feeCurrency"} <= set(signed[0])
        assert sdk(sim.base_url, APIKEY="k" * 64, APISECRET="wrong").trades("BTC-EUR", {})["errorCode"] == 309
        assert sdk(sim.base_url, APIKEY="x" * 64, APISECRET="s3cret").trades("BTC-EUR", {})["errorCode"] == 305
        assert sdk(sim.base_url).trades("BTC-EUR", {})["errorCode"] == 300


def test_cli_prints_the_url_and_serves() -> None:
    command = [
        sys.executable,
        "-m",
        "services.ingest.exchange.sim_server",
        "--port",
        "0",
        "--seed",
        "7",
        "--markets",
        "BTC-EUR,ETH-EUR",
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v2", url)
            markets = requests.get(url + "/markets", timeout=5).json()
            assert [market["market"] for market in markets] == ["BTC-EUR", "ETH-EUR"]
        finally:
            process.terminate()
            process.wait(timeout=5)

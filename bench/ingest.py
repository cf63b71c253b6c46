"""Ingest backfill throughput against the simulated Bitvavo, next to its rate-limit bound and baselines.

    REDIS_URL=redis://127.0.0.1:6379/0 DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/ingest.py [--markets BTC-EUR,ETH-EUR] [--candles 150000] [--json]

Prints, in one run:

* the rate-limit bound of the sim: 1000 requests/min x 1440 candles = 24 000 candles/s;
* baselines: raw pipelined XADD of CandleClosed-sized entries (Redis alone), fetching pages from
  an unlimited sim without storing them (exchange + SDK alone), and storing + publishing
  pre-fetched pages without fetching (PostgreSQL + stream alone);
* the end-to-end backfill (``ExchangeIngestor.run_once``, real SDK client, the sim in its own
  process with no latency and Bitvavo's 1000/min limit): candles/s into PostgreSQL + the stream,
  requests/min, bans;
* the requests a rerun uses after N new candles, next to ceil(N / 1440);
* every figure as a ratio of the bound, and the CPU each process spent per page during the
  end-to-end run (this process = client + persistence, the sim, PostgreSQL, Redis, anything else
  on the machine) next to the CPU the machine has per page at that rate: where they meet, the
  machine, not the code, is the limit.

The default backfill (2 x 150,000 candles) fits in one rate-limit minute; ``--candles 800000`` spans
more than one (1,112 requests), so the client's own limiter binds and the figure is the sustained rate.

Goals: end-to-end >= 0.9 of the bound with zero bans; persistence alone >= the bound (never the
bottleneck); rerun requests = ceil(new / 1440). A temporary PostgreSQL database and Redis
database 14 are used and cleaned up.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import requests
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from services.ingest.backfill import ExchangeIngestor
from services.ingest.exchange.bitvavo import BitvavoClient, BitvavoClientConfig
from services.ingest.exchange.sim_server import ManualClock, SimConfig, SimExchange
from services.ingest.handlers import StoreDeps, announce_window, closed_payloads, store_window
from services.ingest.locks import SeriesLocks
from services.ingest.metrics import IngestMetrics
from services.ingest.planning import Span, pages
from services.ingest.settings import IngestSettings
from services.ingest.validation import RawCandle
from shared.broker import Redis, make_redis
from shared.cli.demo import redis_database
from shared.db.migrate import upgrade
from shared.db.session import make_engine, make_sessionmaker
from shared.db.tables import metadata
from shared.publishing import EventPublisher
from shared.settings import normalise_database_url
from shared.streams import DEFAULT_MAXLEN

START = "2026-01-01T00:00:30Z"
NOW_S = 1_767_225_630.0
MINUTE = 60_000
BOUND = 1000 * 1440 / 60  # candles/s the sim's rate limit allows


class CpuMeter:
    """CPU seconds per process group from /proc (Linux; empty elsewhere): this process (the ingest
    client and its persistence), the sim, PostgreSQL, Redis, and the whole machine."""

    def __init__(self, sims: list[subprocess.Popen[str]]) -> None:
        self.sims = [process.pid for process in sims]
        self.available = os.path.exists("/proc/stat")
        self.tick = os.sysconf("SC_CLK_TCK") if self.available else 100

    def _process(self, pid: int | str) -> float:
        try:
            with open(f"/proc/{pid}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / self.tick

    def sample(self) -> dict[str, float]:
        if not self.available:
            return {}
        groups = {"ingest (this process)": self._process(os.getpid()),
                  "sim exchange": sum(self._process(pid) for pid in self.sims), "postgresql": 0.0, "redis": 0.0}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/comm") as file:
                    name = file.read().strip()
            except OSError:
                continue
            if name.startswith("postgres"):
                groups["postgresql"] += self._process(pid)
            elif name.startswith("redis-server"):
                groups["redis"] += self._process(pid)
        with open("/proc/stat") as file:
            ticks = [int(value) for value in file.readline().split()[1:]]
        groups["machine busy"] = (sum(ticks[:3]) + sum(ticks[5:8])) / self.tick  # user nice system irq softirq steal
        return groups

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        spent = {name: after[name] - before[name] for name in before}
        if spent:
            ours = sum(value for name, value in spent.items() if name != "machine busy")
            spent["other processes"] = max(0.0, spent["machine busy"] - ours)
        return spent


def start_sim(markets: list[str], rate_limit: int) -> tuple[subprocess.Popen[str], str]:
    """The sim in its own process (its own GIL, like the real exchange): no latency, no faults."""
    process = subprocess.Popen(
        [sys.executable, "-m", "services.ingest.exchange.sim_server", "--markets", ",".join(markets),
         "--start", START, "--rate-limit", str(rate_limit), "--gap-rate", "0.002"],
        stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


@asynccontextmanager
async def scratch_database(server_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A fresh, migrated PostgreSQL database, dropped afterwards."""
    admin_url = make_url(normalise_database_url(server_url))
    name = f"tradeloop_bench_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(admin_url.set(database=name).render_as_string(hide_password=False))
    try:
        await upgrade(engine)
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def reset(sessions: async_sessionmaker[AsyncSession], redis: Redis) -> None:
    async with sessions() as session, session.begin():
        names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
        await session.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    async for key in redis.scan_iter(match="tradeloop*", count=5000):
        await redis.delete(key)


def store(sessions: async_sessionmaker[AsyncSession], redis: Redis) -> StoreDeps:
    return StoreDeps(sessions, EventPublisher(redis), IngestMetrics.create(None))


async def raw_xadd(redis: Redis, count: int) -> float:
    """Entries/s of pipelined XADDs (1440 per pipeline) of CandleClosed payloads."""
    candles = [RawCandle(1_700_000_040_000 + i * MINUTE, 61234.5, 61300.25, 61200.0, 61250.75, 3.14159265)
               for i in range(1440)]
    payloads = [p for _, _, p in closed_payloads("BTC-EUR", "1m", candles, "bitvavo")]
    started = time.perf_counter()
    for _ in range(count // 1440):
        async with redis.pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.xadd("tradeloop.bench.xadd", {"__data__": payload}, maxlen=1_000_000, approximate=True)
            await pipe.execute()
    elapsed = time.perf_counter() - started
    await redis.delete("tradeloop.bench.xadd")
    return (count // 1440) * 1440 / elapsed


async def fetch_only(url: str, market: str, page_count: int) -> tuple[float, list[tuple[Span, list[RawCandle]]]]:
    """Candles/s fetched (SDK client, no storing) from an unlimited sim; returns the pages too."""
    client = BitvavoClient(BitvavoClientConfig(rest_url=url, rate_limit=1_000_000))
    end = int(NOW_S * 1000) - int(NOW_S * 1000) % MINUTE
    windows = list(pages(Span(end - page_count * 1440 * MINUTE, end), MINUTE))
    started = time.perf_counter()
    fetched = [(w, await client.fetch_candles(market, "1m", w.start, w.end)) for w in windows]
    elapsed = time.perf_counter() - started
    return sum(len(c) for _, c in fetched) / elapsed, fetched


async def persistence_only(deps: StoreDeps, market: str, fetched: list[tuple[Span, list[RawCandle]]]) -> float:
    """Candles/s stored + published (same two-stage overlap as the backfill) with nothing to fetch."""
    queue: asyncio.Queue[Any] = asyncio.Queue(1)

    async def storer() -> None:
        done: list[Span] = []
        for window, candles in fetched:
            await queue.put(await store_window(market=market, timeframe="1m", window=window, candles=candles,
                                               source="bitvavo", deps=deps, known=done))
            done.append(window)
        await queue.put(None)

    async def announcer() -> None:
        while (stored := await queue.get()) is not None:
            await announce_window(stored, deps=deps, complete_until=stored.window.end)

    started = time.perf_counter()
    await asyncio.gather(storer(), announcer())
    return sum(len(c) for _, c in fetched) / (time.perf_counter() - started)


async def end_to_end(
    deps: StoreDeps, redis: Redis, url: str, markets: list[str], candles: int, meter: CpuMeter
) -> dict[str, Any]:
    """The real backfill: ExchangeIngestor with Bitvavo's limits against the sim process."""
    settings = IngestSettings(source="bitvavo", exchange_url=url, markets=markets, timeframes=["1m"],
                              history_candles=candles, live=False)
    client = BitvavoClient(BitvavoClientConfig(rest_url=url), observer=deps.metrics)
    ingestor = ExchangeIngestor(settings=settings, client=client, store=deps, locks=SeriesLocks(redis, 60))
    await asyncio.to_thread(requests.post, f"{url.removesuffix('/v2')}/_sim/stats/reset", timeout=5)
    cpu_before = meter.sample()
    started = time.perf_counter()
    report = await ingestor.run_once()
    elapsed = time.perf_counter() - started
    cpu = CpuMeter.spent(cpu_before, meter.sample())
    stats = (await asyncio.to_thread(requests.get, f"{url.removesuffix('/v2')}/_sim/stats", timeout=5)).json()
    stored = report.stored
    return {
        "candles": stored, "seconds": elapsed, "candles_per_s": stored / elapsed,
        "requests": stats["total_requests"], "requests_per_min": stats["total_requests"] / elapsed * 60,
        "bans": stats["bans_issued"], "published": report.published,
        "stream_entries": await redis.xlen("tradeloop.evt.candle-closed"),
        "client_budget_per_min": client.budget.capacity,
        "cpu_seconds": cpu, "cores": os.cpu_count() or 1,
    }


async def rerun_requests(deps: StoreDeps, redis: Redis, new_counts: list[int]) -> list[dict[str, int]]:
    """Requests a rerun uses after N new candles (in-process sim on a settable clock)."""
    clock = ManualClock(NOW_S)
    results = []
    with SimExchange(SimConfig(seed=3, clock=clock, markets=("BTC-EUR",))) as sim:
        settings = IngestSettings(source="bitvavo", exchange_url=sim.base_url, markets=["BTC-EUR"],
                                  timeframes=["1m"], history_candles=3000)
        client = BitvavoClient(BitvavoClientConfig(rest_url=sim.base_url))
        ingestor = ExchangeIngestor(settings=settings, client=client, store=deps, locks=SeriesLocks(redis, 60))
        await ingestor.run_once()
        for new in new_counts:
            clock.advance(new * 60)
            sim.reset_stats()
            await ingestor.run_once()
            results.append({"new_candles": new, "requests": sim.request_count("/v2/BTC-EUR/candles"),
                            "expected": math.ceil(new / 1440)})
    return results


async def run(args: argparse.Namespace) -> dict[str, Any]:
    markets = args.markets.split(",")
    redis = make_redis(redis_database(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), 14))
    server = os.environ.get("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    limited, limited_url = start_sim(markets, 1000)
    unlimited, unlimited_url = start_sim(markets, 1_000_000)
    try:
        async with scratch_database(server) as sessions:
            await reset(sessions, redis)
            result: dict[str, Any] = {"bound_candles_per_s": BOUND}
            result["raw_xadd_per_s"] = await raw_xadd(redis, args.xadd)
            result["fetch_only_candles_per_s"], fetched = await fetch_only(unlimited_url, markets[0], args.pages)
            result["persistence_only_candles_per_s"] = await persistence_only(store(sessions, redis), markets[0],
                                                                               fetched)
            del fetched  # 57 600 candles kept alive would slow every later garbage collection of this process
            gc.collect()
            await reset(sessions, redis)
            result["end_to_end"] = await end_to_end(store(sessions, redis), redis, limited_url, markets, args.candles,
                                                    CpuMeter([limited]))
            await reset(sessions, redis)
            result["rerun"] = await rerun_requests(store(sessions, redis), redis, [2000, 1440, 5000, 7])
            await reset(sessions, redis)
    finally:
        for process in (limited, unlimited):
            process.terminate()
            process.wait(timeout=10)
        await redis.aclose()
    return result


def report(result: dict[str, Any]) -> None:
    e2e = result["end_to_end"]
    ratio = e2e["candles_per_s"] / BOUND
    fetch, persist = result["fetch_only_candles_per_s"], result["persistence_only_candles_per_s"]
    budget = e2e["client_budget_per_min"] * 1440 / 60

    def row(name: str, value: float, unit: str = "candles/s", note: str = "") -> str:
        return f"{name:<48}{value:>10,.0f} {unit:<10} {value / BOUND:5.2f} x bound{note}"

    lines = [
        row("rate-limit bound (sim 1000 req/min x 1440)", BOUND),
        row("client budget (1000 - 50 reserve req/min)", budget, note="  (the most a backfill over 1 min can do)"),
        row("raw pipelined XADD (Redis alone)", result["raw_xadd_per_s"], "entries/s"),
        row("fetch only (SDK client <- sim, unlimited)", fetch),
        row("store + publish only (PostgreSQL + stream)", persist),
        row(f"end-to-end backfill ({e2e['candles']:,} candles, {e2e['seconds']:.1f} s)", e2e["candles_per_s"],
            note=f"  {e2e['candles_per_s'] / min(fetch, persist):.2f} x min(fetch only, store only)"),
        f"{'':<48}{e2e['requests_per_min']:>10.0f} requests/min of 1000, bans {e2e['bans']}, "
        f"published {e2e['published']:,} (stream length {e2e['stream_entries']:,}, capped at ~{DEFAULT_MAXLEN:,})",
    ]
    if e2e["requests"] < e2e["client_budget_per_min"]:  # the whole run fits in one rate-limit window
        sustained = min(e2e["candles_per_s"], budget)
        lines.append(row("  sustained: min(end-to-end, client budget)", sustained,
                         note=f"  ({e2e['requests']} requests fit in one 60 s window: the limit did not bind)"))
    if cpu := e2e["cpu_seconds"]:
        pages = max(1, e2e["requests"])
        capacity = e2e["cores"] * e2e["seconds"]
        lines.append(f"CPU during the end-to-end run ({e2e['cores']} cores = {capacity / pages * 1000:.0f} ms of CPU per "
                     f"page at this rate):")
        lines += [f"  {name:<28}{seconds / pages * 1000:>7.1f} ms/page  {seconds / capacity:6.1%} of the machine"
                  for name, seconds in cpu.items()]
    lines += [f"rerun after {r['new_candles']:>5} new candles: {r['requests']} requests (ceil(N/1440) = "
              f"{r['expected']})" for r in result["rerun"]]
    goals = {
        "end-to-end >= 0.9 x bound with zero bans": ratio >= 0.9 and e2e["bans"] == 0,
        "persistence never the bottleneck (store+publish >= bound)": persist >= BOUND,
        "rerun requests = ceil(new/1440)": all(r["requests"] == r["expected"] for r in result["rerun"]),
    }
    lines += [f"goal {'met    ' if ok else 'MISSED '} {name}" for name, ok in goals.items()]
    sys.stdout.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markets", default="BTC-EUR,ETH-EUR")
    parser.add_argument("--candles", type=int, default=150_000, help="1m candles per market for the backfill")
    parser.add_argument("--pages", type=int, default=40, help="pages for the fetch-only / persistence-only runs")
    parser.add_argument("--xadd", type=int, default=144_000, help="entries for the raw XADD baseline")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    report(result)
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

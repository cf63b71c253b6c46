"""Inference under load: candle → prediction latency, steady and while versions are hot-swapped.

    .venv/bin/python bench/hot_swap.py [--rate 500] [--steady 12] [--swaps 12] [--swap-every 2] [--blocks 3]
                                       [--shadow 10]

REDIS_URL and DATABASE_URL name the servers (default: local Redis, PostgreSQL as user postgres). The run
creates a fresh PostgreSQL database (migrated, dropped at the end) and uses Redis database 12. It stores
synthetic 1m candles for one slot (as ingest does), trains three XGBoost versions with the trainer's
pipeline, records them and activates the first through the registry's handlers, then starts real
inference and registry processes (shared.cli.processes.ServiceGroup). It measures the floor (2 s: the
process' idle CPU and this machine's Redis PING round trip; 3 s before and 3 s after the flow:
``bench/relay.py``, a consumer that only reads in a group and stamps, at the same rate: the baseline the
latencies stand next to), then publishes CandleClosed at ``--rate`` per second:

1. warm-up (2 s, not measured);
2. steady: nothing else happens;
3. swaps: an ActivateModel command every ``--swap-every`` seconds (the registry service activates the
   next version: epochs 2, 3, ...; this process only publishes, so its flow never waits behind a
   registry transaction);
   steady and swaps alternate, ``--blocks`` blocks of each (default 3 × 4 s, two activations per swaps
   block): this host's speed drifts within minutes (the same code measured 720 and 1050 µs of CPU per
   candle in different runs), and one steady stretch before one swaps stretch put that drift into the
   ratio, either way; alternating puts it on both alike;
4. shadow: the two other versions run as challengers (ChallengersChanged as the registry publishes it,
   one second before the measured part).

Latency is measured on Redis' clock: the CandleClosed entry id → the champion's PredictionMade entry id
(millisecond resolution). Goals from the issue "Registry and inference at full depth": p99 ≤ 5 ms steady
at 500 candles/s, swap p99 ≤ 50 ms, p99 during swaps ≤ 1.5 × steady, no candle without a prediction.
The exit code is 0 when those goals are met. BENCH_DETAILS=1 prints each activation's timings;
BENCH_LOG_LEVEL=INFO makes the service log more (``--keep`` keeps its log).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import relay  # bench/relay.py, next to this script
from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.ingest.handlers import candle_key
from services.ingest.repository import insert_candles, ms_to_datetime
from services.ingest.sources import SyntheticSource
from services.registry.handlers import RegistryDeps, RegistryMetrics, handle_activate, handle_model_trained
from services.registry.settings import RegistrySettings
from services.trainer.datasets import bootstrap_samples
from services.trainer.families.xgboost import MODEL_TYPE, XGBoostParams
from services.trainer.pipeline import RunConfig, train_xgboost
from shared.artifacts import ArtifactStore
from shared.broker import Redis, make_redis
from shared.cli.demo import clear_streams, redis_database
from shared.cli.processes import ServiceGroup
from shared.db.migrate import upgrade
from shared.db.models import Prediction
from shared.db.session import make_engine, make_sessionmaker
from shared.direct_redis import DirectConnection
from shared.messages import (
    ActivateModel,
    CandleClosed,
    ChallengerRef,
    ChallengersChanged,
    Family,
    ModelTrained,
    Slot,
    utc_now,
)
from shared.ml.features import LOOKBACK, feature_matrix, feature_rows, feature_schema_hash
from shared.ml.predictor import load_predictor
from shared.publishing import EventPublisher, OnceEntry
from shared.settings import normalise_database_url
from shared.streams import Group, Stream

SLOT = Slot(family=Family.XGBOOST, market="BTC-EUR", timeframe="1m")
INTERVAL_MS = 60_000
HISTORY = 3_000
REDIS_DB = 12
WARMUP_SECONDS = 2.0
GOAL_STEADY_P99_MS = 5.0
GOAL_SWAP_P99_MS = 50.0
GOAL_SWAP_LATENCY_RATIO = 1.5
SWAP_WINDOW_MS = 100
"""The bench reports apart the candles this close after an activation (where the load runs)."""


@dataclass
class Version:
    version_id: str
    event: ModelTrained


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int, int]:
    """This machine's CPU clock ticks so far, all CPUs: (busy, steal, total) from /proc/stat ((0, 0, 0) elsewhere).

    Steal is time a virtual CPU wanted to run and the hypervisor ran something else: stalls no process here causes.
    """
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0, 0
    values += [0] * (10 - len(values))
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]  # guest time is counted in user already
    return user + nice + system + irq + softirq, steal, sum(values[:8])


@dataclass
class Run:
    """What the run sent and when (bench clock), for the analysis."""

    pid: int = 0
    rate: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # phase → inference CPU seconds per second
    own_cpu: dict[str, float] = field(default_factory=dict)  # phase → this load generator's CPU seconds per second
    phase_of: dict[str, str] = field(default_factory=dict)  # candle event id → phase
    ping_ms: list[float] = field(default_factory=list)  # Redis PING round trips before the flow
    relay_ms: dict[str, list[float]] = field(default_factory=dict)  # before/after → relay stamp latencies
    activations: list[str] = field(default_factory=list)  # version ids activated during the swaps phase
    challengers: list[str] = field(default_factory=list)
    lateness_ms: dict[str, list[float]] = field(default_factory=dict)  # phase → publish time - schedule
    spent: dict[str, list[float]] = field(default_factory=dict)  # phase → [inference CPU s, own CPU s, wall s]
    machine: dict[str, list[int]] = field(default_factory=dict)  # phase → machine ticks [busy, steal, total]

    def add_machine(self, phase: str, before: tuple[int, int, int], after: tuple[int, int, int]) -> None:
        total = self.machine.setdefault(phase, [0, 0, 0])
        for index in range(3):
            total[index] += after[index] - before[index]

    def machine_share(self, phase: str, index: int) -> float:
        """Busy (0) or steal (1) share of all CPUs' time during ``phase``, in %."""
        ticks = self.machine.get(phase, [0, 0, 0])
        return 100.0 * ticks[index] / ticks[2] if ticks[2] else float("nan")

    def add_block(self, phase: str, service_cpu: float, own_cpu: float, wall: float) -> None:
        """Account one block of ``phase`` (a phase may come in several blocks): CPU per second over all of them."""
        total = self.spent.setdefault(phase, [0.0, 0.0, 0.0])
        for index, value in enumerate((service_cpu, own_cpu, wall)):
            total[index] += value
        self.cpu[phase], self.own_cpu[phase] = total[0] / total[2], total[1] / total[2]


def ms(entry_id: bytes | str) -> int:
    """The millisecond part of a stream entry id (Redis' clock at XADD)."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.split("-", 1)[0])


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


# ------------------------------------------------------------------------------------------- setup


async def create_database(server_url: str) -> tuple[str, str]:
    name = f"tradeloop_bench_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(make_url(server_url), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    return name, make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(server_url: str, name: str) -> None:
    admin = create_async_engine(make_url(server_url), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


async def synthetic_candles(count: int) -> list[Any]:
    source = SyntheticSource(seed=11, anchor=pd.Timestamp("2026-06-01", tz="UTC").to_pydatetime(),
                             history_candles=count, wall_clock=lambda: 0.0)
    origin = source.origin_ms(INTERVAL_MS)
    return await source.fetch(SLOT.market, INTERVAL_MS, origin, origin + count * INTERVAL_MS)


def train_versions(candles: Sequence[Any], store: ArtifactStore, count: int) -> list[Version]:
    frame = pd.DataFrame({
        "open_time": [ms_to_datetime(c.open_time_ms) for c in candles], "open": [c.open for c in candles],
        "high": [c.high for c in candles], "low": [c.low for c in candles], "close": [c.close for c in candles],
        "volume": [c.volume for c in candles]})
    samples = bootstrap_samples(frame, frame["open_time"].iloc[LOOKBACK], horizon=12)
    versions = []
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime())
    for n in range(count):
        config = RunConfig(min_samples=100, window_days=30, horizon=12, validation_fraction=0.2,
                           decision_threshold=0.001,
                           params=XGBoostParams(num_boost_round=200, max_depth=4 + n % 2, learning_rate=0.05, seed=n))
        trained = train_xgboost(samples, config, {"bench": True})
        ref = store.put_bundle(trained.files, trained.metadata)
        version_id = f"v{stamp}_b{n}"
        event = ModelTrained(
            version_id=version_id, slot=SLOT, run_id=f"bench-{n}", model_type=MODEL_TYPE, artifact=ref,
            feature_schema_hash=feature_schema_hash(), trained_at=utc_now(),
            training_samples=trained.training_samples, validation_samples=trained.validation_samples,
            metrics=trained.metrics, params={"seed": n}, lineage={"bench": True})
        versions.append(Version(version_id, event))
    return versions


# ------------------------------------------------------------------------------------------- flow


STAMP_SENTINEL = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class PreparedCandle:
    """A CandleClosed serialised before the flow; only ``occurred_at`` is filled in at publication."""

    key: str
    event_id: str
    head: str
    tail: str

    def entry(self, stream: str, now: datetime) -> OnceEntry:
        return OnceEntry(self.key, stream, self.event_id, f'{self.head}"{now.isoformat()}"{self.tail}')


def prepare_candles(candles: Sequence[Any]) -> list[PreparedCandle]:
    """Serialise the flow's CandleClosed up front: the load generator shares the machine's two cores with
    the service it measures, and pydantic construction + JSON per candle was most of its CPU."""
    marker = TypeAdapter(datetime).dump_json(STAMP_SENTINEL).decode()
    prepared = []
    for raw in candles:
        event = CandleClosed(market=SLOT.market, timeframe=SLOT.timeframe, open_time=ms_to_datetime(raw.open_time_ms),
                             open=raw.open, high=raw.high, low=raw.low, close=raw.close, volume=raw.volume,
                             source="bench", occurred_at=STAMP_SENTINEL)
        head, found, tail = event.model_dump_json().partition(marker)
        if not found or marker in tail:
            raise AssertionError("occurred_at not found once in the serialised candle")
        prepared.append(PreparedCandle(candle_key(SLOT.market, SLOT.timeframe, raw.open_time_ms),
                                       str(event.event_id), head, tail))
    CandleClosed.model_validate_json(prepared[0].entry(Stream.CANDLE_CLOSED.value, utc_now()).payload)  # still valid
    return prepared


async def publish_flow(publisher: EventPublisher, candles: Sequence[PreparedCandle],
                       phases: Sequence[tuple[str, float]], rate: float, run: Run) -> None:
    """Publish CandleClosed at ``rate`` per second through the phases (candles were stored beforehand)."""
    stream = Stream.CANDLE_CLOSED.value
    connection = DirectConnection(publisher.redis)  # the generator's own: less of its CPU taken from the service
    started = time.perf_counter()
    index = 0
    for phase, seconds in phases:
        cpu_before, own_before, wall_before = cpu_seconds(run.pid), cpu_seconds(os.getpid()), time.perf_counter()
        machine_before = machine_ticks()
        late = run.lateness_ms.setdefault(phase, [])
        for _ in range(int(seconds * rate)):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            late.append((time.perf_counter() - started - index / rate) * 1000)
            candle = candles[index]
            run.phase_of[candle.event_id] = phase
            await publisher.publish_once_raw([candle.entry(stream, utc_now())], via=connection)
            index += 1
        run.add_block(phase, cpu_seconds(run.pid) - cpu_before, cpu_seconds(os.getpid()) - own_before,
                      time.perf_counter() - wall_before)
        run.add_machine(phase, machine_before, machine_ticks())
    await connection.close()


async def drive_control(publisher: EventPublisher, versions: Sequence[Version],
                        phases: Sequence[tuple[str, float]], swap_every: float, run: Run) -> None:
    """Activate versions in rotation during the swaps blocks; set two challengers for the shadow phase."""
    started = time.monotonic()
    blocks, at = [], 0.0
    for phase, seconds in phases:
        blocks.append((phase, at, at + seconds))
        at += seconds
    offsets = {phase: (begin, end) for phase, begin, end in blocks}
    champion = 0
    for _phase, begin, end in (block for block in blocks if block[0] == "swaps"):
        moment = begin + swap_every / 2
        while moment < end - 0.5:
            await asyncio.sleep(max(0.0, started + moment - time.monotonic()))
            champion = (champion + 1) % len(versions)
            await publisher.publish(ActivateModel(version_id=versions[champion].version_id, requested_by="bench",
                                                  reason="hot-swap bench"))  # to the registry service, as the CLI does
            run.activations.append(versions[champion].version_id)
            moment += swap_every
    if "shadow-load" in offsets:
        await asyncio.sleep(max(0.0, started + offsets["shadow-load"][0] - time.monotonic()))
        others = [v for n, v in enumerate(versions) if n != champion]
        run.challengers = [v.version_id for v in others]
        await publisher.publish(ChallengersChanged(
            slot=SLOT, revision=1, actor="bench", reason="shadow bench",
            challengers=[ChallengerRef(version_id=v.version_id, artifact=v.event.artifact,
                                       feature_schema_hash=v.event.feature_schema_hash) for v in others]))


async def measure_floor(redis: Redis, run: Run, seconds: float = 2.0) -> None:
    """Before the flow: the inference process' idle CPU, and this machine's Redis round trip (PING every 2 ms)."""
    cpu_before, started = cpu_seconds(run.pid), time.perf_counter()
    while time.perf_counter() - started < seconds:
        sent = time.perf_counter()
        await redis.ping()
        run.ping_ms.append((time.perf_counter() - sent) * 1000)
        await asyncio.sleep(0.002)
    run.cpu["idle"] = (cpu_seconds(run.pid) - cpu_before) / (time.perf_counter() - started)


RELAY_SOURCE, RELAY_SINK = "tradeloop.bench.relay-in", "tradeloop.bench.relay-out"
"""The relay's streams: the bench's own, never a contract of the services."""
RELAY_SECONDS = 3.0


async def measure_relay(redis: Redis, redis_url: str, run: Run, when: str, seconds: float = RELAY_SECONDS) -> None:
    """The machine's consumer floor: entries at the flow's rate through ``bench/relay.py`` (a process that reads
    in a group and stamps, no model), the publisher's stamp → the relay's; kept under ``when``."""
    await redis.delete(RELAY_SOURCE, RELAY_SINK)
    await redis.xgroup_create(RELAY_SOURCE, relay.GROUP, id="$", mkstream=True)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("relay.py")), redis_url, RELAY_SOURCE, RELAY_SINK,
        stdout=asyncio.subprocess.PIPE)
    connection = DirectConnection(redis)
    try:
        assert process.stdout is not None
        if (await asyncio.wait_for(process.stdout.readline(), 60.0)).strip() != b"ready":
            raise RuntimeError("bench/relay.py did not start")
        count = int(seconds * run.rate)
        started = time.perf_counter()
        for index in range(count):
            delay = started + index / run.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await connection.execute("XADD", RELAY_SOURCE, "*", relay.STAMP_FIELD, repr(time.time()))
        stamps: list[list[float]] = []
        for _ in range(100):
            entries: Any = await redis.xrange(RELAY_SINK)
            stamps = [pair for _entry, fields in entries
                      for pair in json.loads(fields.get(relay.STAMPS_FIELD.encode()) or fields[relay.STAMPS_FIELD])]
            if len(stamps) >= count:
                break
            await asyncio.sleep(0.1)
        run.relay_ms[when] = [(read - sent) * 1000 for sent, read in stamps]
    finally:
        await connection.close()
        if process.returncode is None:
            process.kill()
        await process.wait()
        await redis.delete(RELAY_SOURCE, RELAY_SINK)


async def drained(redis: Redis) -> bool:
    groups: Any = await redis.xinfo_groups(Stream.CANDLE_CLOSED.value)
    for group in groups:
        name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
        if name == Group.INFERENCE.value:
            return int(group["pending"]) == 0 and int(group.get("lag") or 0) == 0
    return False


async def read_stream(redis: Redis, stream: Stream) -> list[tuple[int, dict[str, Any]]]:
    out: list[tuple[int, dict[str, Any]]] = []
    start = "-"
    while True:
        entries: Any = await redis.xrange(stream.value, min=start, max="+", count=10_000)
        for entry_id, fields in entries:
            out.append((ms(entry_id), json.loads(fields[b"__data__"])))
        if len(entries) < 10_000:
            return out
        last = entries[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else last)


# ------------------------------------------------------------------------------------------- figures


def best_per_call(call: Any, items: Sequence[Any], repeat: int = 3) -> float:
    """Best of ``repeat`` passes: µs per ``call(item)``."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for item in items:
            call(item)
        best = min(best, (time.perf_counter() - started) / len(items))
    return best * 1e6


def feature_overhead(candles: Sequence[Any]) -> tuple[float, float]:
    """µs per candle: serving's newest-row features (feature_rows) vs the whole-window feature_matrix it replaced."""
    ohlcv = np.array([[c.open, c.high, c.low, c.close, c.volume] for c in candles[-600:]], dtype=np.float64)
    windows = [ohlcv[end - LOOKBACK : end] for end in range(LOOKBACK, ohlcv.shape[0])]
    for window in windows:
        if not np.array_equal(feature_rows(window, 1), feature_matrix(window)[-1:]):
            raise AssertionError("feature_rows differs from feature_matrix")
    return (best_per_call(lambda w: feature_rows(w, 1), windows),
            best_per_call(lambda w: feature_matrix(w)[-1:], windows))


async def publish_overhead(redis: Redis, batches: int = 300) -> tuple[float, float]:
    """µs per batch of two PredictionMade-sized entries: publish_once (one EVALSHA) vs the previous code
    (a pipeline with one EVALSHA per message, which redis-py precedes with SCRIPT EXISTS)."""
    publisher = EventPublisher(redis)
    old_script = redis.register_script(OLD_ONCE)
    stream = "tradeloop.bench.scratch"
    payload = json.dumps({"bench": "x" * 400})

    async def new(n: int) -> None:
        await publisher.publish_once_raw([OnceEntry(f"bench-new-{n}-{i}", stream, f"e{i}", payload) for i in (0, 1)])

    async def old(n: int) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for i in (0, 1):
                await old_script(keys=[f"tradeloop:once:bench-old-{n}-{i}", stream],
                                 args=[f"e{i}", 60, 10_000, payload], client=pipe)
            await pipe.execute()

    timings = {}
    for name, call in (("new", new), ("old", old), ("new2", new), ("old2", old)):
        started = time.perf_counter()
        for n in range(batches):
            await call(n + (batches if name.endswith("2") else 0))
        timings[name] = (time.perf_counter() - started) / batches * 1e6
    await redis.delete(stream)
    return min(timings["new"], timings["new2"]), min(timings["old"], timings["old2"])


async def command_cpu(redis: Redis, calls: int = 2000) -> tuple[float, float]:
    """CPU µs of this process per one-entry once-publication: on the candle path's DirectConnection vs through
    the client (pool, retry, recorder), the way the candle path published before; best of two passes each."""
    publisher = EventPublisher(redis)
    connection = DirectConnection(redis)
    stream = "tradeloop.bench.scratch"
    payload = json.dumps({"bench": "x" * 400})
    best: dict[str, float] = {}
    try:
        for name in ("direct", "client", "direct", "client"):
            via = connection if name == "direct" else None
            started = time.process_time()
            for n in range(calls):
                await publisher.publish_once_raw([OnceEntry(f"bench-cpu-{name}-{time.time_ns()}-{n}", stream, "e",
                                                            payload)], via=via)
            best[name] = min(best.get(name, float("inf")), (time.process_time() - started) / calls * 1e6)
    finally:
        await connection.close()
        await redis.delete(stream)
    return best["direct"], best["client"]


OLD_ONCE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', '__data__', ARGV[4])
end
return false
"""
"""shared.publishing's script before publish_once became one call per batch (for the same-run baseline)."""


def predict_overhead(store: ArtifactStore, version: Version, candles: Sequence[Any]) -> tuple[float, float, float]:
    """µs per 1-row call: Predictor.predict as served (compiled forest) vs raw booster.inplace_predict on the
    same rows; and their ratio."""
    predictor = load_predictor(store, version.event.artifact, expected_schema_hash=version.event.feature_schema_hash)
    if not predictor.verify_forest():  # type: ignore[attr-defined]  # what inference does after a swap
        raise AssertionError("the trained bundle carries no usable compiled forest")
    booster = predictor.booster  # type: ignore[attr-defined]
    ohlcv = np.array([[c.open, c.high, c.low, c.close, c.volume] for c in candles[-1200:]], dtype=np.float64)
    rows = [np.ascontiguousarray(r.reshape(1, -1)) for r in feature_matrix(ohlcv)[LOOKBACK:].astype(np.float32)]
    for row in rows[:50]:
        predictor.predict(row)
        booster.inplace_predict(row)
    served = np.concatenate([predictor.scores(row) for row in rows])  # type: ignore[attr-defined]
    if not np.array_equal(served.view(np.uint32), np.concatenate([booster.inplace_predict(r) for r in rows]).view(np.uint32)):
        raise AssertionError("the served predictor's scores differ from XGBoost's")
    timings = {name: best_per_call(call, rows)
               for name, call in (("raw", booster.inplace_predict), ("wrapped", predictor.predict))}
    return timings["wrapped"], timings["raw"], timings["wrapped"] / timings["raw"]


def scrape(port: int) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")) or sample.name.endswith("_total"):
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def report_line(name: str, value: str, goal: str = "", ratio: str = "", ok: bool | None = None) -> None:
    mark = "" if ok is None else ("  OK" if ok else "  MISSED")
    sys.stdout.write(f"  {name:<46} {value:>16}   {goal:<16} {ratio:<14}{mark}\n")


async def analyse(redis: Redis, run: Run, sessions: Any, swapped_versions: Sequence[str], port: int,
                  overhead: tuple[float, float, float], baselines: dict[str, tuple[float, float]]) -> bool:
    candles = await read_stream(redis, Stream.CANDLE_CLOSED)
    predictions = await read_stream(redis, Stream.PREDICTION_MADE)
    activated = await read_stream(redis, Stream.MODEL_ACTIVATED)
    swapped = await read_stream(redis, Stream.MODEL_SWAPPED)
    commanded_ms = [at for at, _body in await read_stream(redis, Stream.ACTIVATE_MODEL)]
    champion_at: dict[str, int] = {}
    champion_made: dict[str, datetime] = {}
    shadow_count: dict[str, int] = {}
    stale = 0
    by_version: list[tuple[int, str]] = []
    for at, body in predictions:
        if body.get("shadow"):
            shadow_count[body["candle_event_id"]] = shadow_count.get(body["candle_event_id"], 0) + 1
            continue
        stale += bool(body.get("stale"))
        champion_at.setdefault(body["candle_event_id"], at)
        champion_made.setdefault(body["candle_event_id"], datetime.fromisoformat(body["occurred_at"]))
        by_version.append((at, body["version_id"]))
    latency: dict[str, list[float]] = {}
    activation_ms = [at for at, body in activated if body["epoch"] >= 2]
    near_swap: list[float] = []  # µs-clock latencies of swaps-phase candles within SWAP_WINDOW_MS after an activation
    far_swap: list[float] = []  # and of the other swaps-phase candles
    since_activation: list[tuple[int, float]] = []
    since_command: list[tuple[int, float]] = []  # (ms since the latest ActivateModel entry, µs-clock latency)
    fine: dict[str, list[float]] = {}  # µs clock: CandleClosed.occurred_at → PredictionMade.occurred_at, in ms
    missing = 0
    for at, body in candles:
        phase = run.phase_of.get(body["event_id"])
        if phase is None:
            continue
        predicted = champion_at.get(body["event_id"])
        if predicted is None:
            missing += 1
            continue
        latency.setdefault(phase, []).append(predicted - at)
        made = (champion_made[body["event_id"]] - datetime.fromisoformat(body["occurred_at"])).total_seconds()
        fine.setdefault(phase, []).append(made * 1000)
        if phase == "swaps":
            near = any(0 <= at - a <= SWAP_WINDOW_MS for a in activation_ms)
            (near_swap if near else far_swap).append(made * 1000)
            commanded = min((at - c for c in commanded_ms if at >= c), default=None)
            if commanded is not None:
                since_command.append((commanded, made * 1000))
            since = min((at - a for a in activation_ms if at >= a), default=None)
            if since is not None:
                since_activation.append((since, made * 1000))
    act_to_first: list[float] = []
    for at, body in activated:
        if body["epoch"] < 2:
            continue
        first = next((p for p, version in by_version if p >= at and version == body["version_id"]), None)
        if first is not None:
            act_to_first.append(first - at)
        if os.getenv("BENCH_DETAILS"):
            swap = next((a for a, b in swapped if b["epoch"] == body["epoch"]), None)
            sys.stdout.write(f"  activation epoch {body['epoch']} {body['version_id']} at {at}: swapped +"
                             f"{(swap - at) if swap else None} ms, first prediction +{(first - at) if first else None} ms\n")
    to_swap = [body["activation_to_swap_seconds"] * 1000 for _at, body in swapped if body["epoch"] >= 2]
    loads = [body["load_seconds"] * 1000 for _at, body in swapped if body["epoch"] >= 2]
    shadow_candles = [e for e, p in run.phase_of.items() if p == "shadow"]
    shadow_missing = sum(1 for e in shadow_candles if shadow_count.get(e, 0) < len(run.challengers))
    async with sessions() as session:
        rows = (await session.execute(select(Prediction.shadow, func.count()).group_by(Prediction.shadow))).all()
    stored = {bool(shadow): int(n) for shadow, n in rows}
    metrics = scrape(port)

    steady, swaps, shadow = latency.get("steady", []), latency.get("swaps", []), latency.get("shadow", [])
    steady_p99, swaps_p99 = pct(steady, 99), pct(swaps, 99)
    coarse_ratio = swaps_p99 / steady_p99 if steady_p99 > 0 else float("inf")
    fine_steady, fine_swaps, fine_shadow = fine.get("steady", []), fine.get("swaps", []), fine.get("shadow", [])
    ratio = pct(fine_swaps, 99) / pct(fine_steady, 99) if fine_steady else float("inf")
    sent = sum(1 for p in run.phase_of.values() if p in ("steady", "swaps", "shadow"))
    out = sys.stdout.write
    out(f"\n=== hot-swap bench: {len(run.phase_of)} candles at the configured rate, slot {SLOT.key} ===\n")
    report_line("figure", "measured", "goal", "measured/goal")
    report_line("steady candle→prediction p50", f"{pct(steady, 50):.1f} ms")
    report_line("  steady p90 / p95 / p99.9 / max",
                f"{pct(steady, 90):.0f} / {pct(steady, 95):.0f} / {pct(steady, 99.9):.0f} / {max(steady, default=0):.0f} ms")
    report_line("steady candle→prediction p99", f"{steady_p99:.1f} ms", f"≤ {GOAL_STEADY_P99_MS:g} ms",
                f"{steady_p99 / GOAL_STEADY_P99_MS:.2f}", steady_p99 <= GOAL_STEADY_P99_MS)
    report_line("during swaps candle→prediction p50", f"{pct(swaps, 50):.1f} ms")
    report_line("during swaps candle→prediction p99", f"{swaps_p99:.1f} ms")
    report_line("  p99 during swaps / steady p99 (entry ids)", f"{coarse_ratio:.2f}×")
    report_line("µs clock, candle stamped → prediction made: steady p50 / p99",
                f"{pct(fine_steady, 50):.2f} / {pct(fine_steady, 99):.2f} ms")
    report_line("  during swaps p50 / p99", f"{pct(fine_swaps, 50):.2f} / {pct(fine_swaps, 99):.2f} ms")
    report_line(f"  with {len(run.challengers)} shadow challengers p50 / p99",
                f"{pct(fine_shadow, 50):.2f} / {pct(fine_shadow, 99):.2f} ms")
    report_line(f"  swaps phase, candles ≤ {SWAP_WINDOW_MS} ms after an activation: n / p50 / p99",
                f"{len(near_swap)} / {pct(near_swap, 50):.2f} / {pct(near_swap, 99):.2f} ms")
    over = pct(fine_steady, 99)
    report_line("    the other swaps-phase candles: n / p50 / p99", f"{len(far_swap)} / {pct(far_swap, 50):.2f} / "
                f"{pct(far_swap, 99):.2f} ms")
    report_line("    swaps-phase candles over the steady p99: near / other",
                f"{sum(v > over for v in near_swap)} / {sum(v > over for v in far_swap)}")
    edges = (0, 10, 20, 30, 40, 50, 100, 250, 500, 1000)
    registry_ms = [min((a - c for a in activation_ms if a >= c), default=float("nan")) for c in commanded_ms[1:]]
    report_line("    ActivateModel → ModelActivated (registry) p50 / max", f"{pct(registry_ms, 50):.1f} / {max(registry_ms, default=float('nan')):.1f} ms")
    shares = []
    for low, high in itertools.pairwise((*edges, None)):
        values = [v for since, v in since_command if since >= low and (high is None or since < high)]
        share = 100.0 * sum(v > over for v in values) / len(values) if values else float("nan")
        shares.append(f"{low}{'+' if high is None else ''}: {share:.1f}")
    report_line("    over the steady p99 by ms since the ActivateModel command (% of candles)", " · ".join(shares))
    report_line("  p99 during swaps / steady p99 (µs clock)", f"{ratio:.2f}×", f"≤ {GOAL_SWAP_LATENCY_RATIO:g}×",
                f"{ratio / GOAL_SWAP_LATENCY_RATIO:.2f}", ratio <= GOAL_SWAP_LATENCY_RATIO)
    if os.getenv("BENCH_DETAILS"):
        edges = [0, 20, 50, 100, 200, 400, 700, 1000, 1500, 2500]
        for low, high in itertools.pairwise(edges):
            inside = [v for since, v in since_activation if low <= since < high]
            out(f"    {low}-{high} ms after activation: n {len(inside)} over steady p99 {sum(v > over for v in inside)}"
                f" p99 {pct(inside, 99):.2f}\n")
    report_line(f"swaps: activations ({len(act_to_first)} of {len(swapped_versions)})", "")
    report_line("  activation→swapped p50", f"{pct(to_swap, 50):.1f} ms")
    report_line("  activation→swapped p99", f"{pct(to_swap, 99):.1f} ms", f"≤ {GOAL_SWAP_P99_MS:g} ms",
                f"{pct(to_swap, 99) / GOAL_SWAP_P99_MS:.2f}", pct(to_swap, 99) <= GOAL_SWAP_P99_MS)
    report_line("  activation→first new-version prediction p50", f"{pct(act_to_first, 50):.1f} ms")
    report_line("  activation→first new-version prediction p99", f"{pct(act_to_first, 99):.1f} ms",
                f"≤ {GOAL_SWAP_P99_MS:g} ms", f"{pct(act_to_first, 99) / GOAL_SWAP_P99_MS:.2f}",
                pct(act_to_first, 99) <= GOAL_SWAP_P99_MS)
    report_line("  load+verify+warm-up p50 / p99", f"{pct(loads, 50):.1f} / {pct(loads, 99):.1f} ms")
    report_line(f"with {len(run.challengers)} shadow challengers: p50", f"{pct(shadow, 50):.1f} ms")
    report_line(f"with {len(run.challengers)} shadow challengers: p99", f"{pct(shadow, 99):.1f} ms",
                f"≤ {GOAL_STEADY_P99_MS:g} ms", f"{pct(shadow, 99) / GOAL_STEADY_P99_MS:.2f}",
                pct(shadow, 99) <= GOAL_STEADY_P99_MS)
    report_line("  shadow candles missing a challenger prediction", f"{shadow_missing}", "0", "",
                shadow_missing == 0)
    report_line("candles without a champion prediction", f"{missing} of {len(run.phase_of)}", "0", "",
                missing == 0)
    report_line("prediction rows stored (champion / shadow)", f"{stored.get(False, 0)} / {stored.get(True, 0)}",
                f"{len(run.phase_of)} / …", "", stored.get(False, 0) == len(run.phase_of))
    report_line("stale-flagged predictions (expiry off)", f"{stale}", "0", "", stale == 0)
    wrapped, raw, overhead_ratio = overhead
    report_line("Predictor.predict (served) vs raw inplace_predict (1 row)", f"{wrapped:.0f} / {raw:.0f} µs", "",
                f"{overhead_ratio:.2f}×")
    fast, reference = baselines["features"]
    report_line("features newest row vs feature_matrix (old)", f"{fast:.0f} / {reference:.0f} µs", "",
                f"{fast / reference:.2f}×")
    once, pipeline = baselines["publish"]
    report_line("publish_once 2 entries vs old pipeline", f"{once:.0f} / {pipeline:.0f} µs", "",
                f"{once / pipeline:.2f}×")
    direct, client = baselines["command"]
    report_line("client CPU per publication: own connection vs pool", f"{direct:.0f} / {client:.0f} µs", "",
                f"{direct / client:.2f}×")
    count = metrics.get("tradeloop_predict_seconds_count", 0.0) or 1.0
    service_us = metrics.get("tradeloop_predict_seconds_sum", 0.0) / count * 1e6
    report_line("service features+predict per candle vs raw", f"{service_us:.0f} / {raw:.0f} µs", "",
                f"{service_us / raw:.2f}×")
    batches = metrics.get("tradeloop_inference_batch_candles_count", 0.0) or 1.0
    report_line("mean candles per batch", f"{metrics.get('tradeloop_inference_batch_candles_sum', 0.0) / batches:.2f}")
    writes = metrics.get("tradeloop_prediction_write_seconds_count", 0.0) or 1.0
    report_line("mean write+ack per flush (background)",
                f"{metrics.get('tradeloop_prediction_write_seconds_sum', 0.0) / writes * 1000:.2f} ms")
    shadows = metrics.get("tradeloop_shadow_seconds_count", 0.0) or 1.0
    report_line("mean shadow work per flush (event-loop steps)",
                f"{metrics.get('tradeloop_shadow_seconds_sum', 0.0) / shadows * 1000:.2f} ms")
    report_line("inference CPU (cores) idle / steady / swaps / shadow",
                " / ".join(f"{run.cpu.get(p, float('nan')):.2f}" for p in ("idle", "steady", "swaps", "shadow")))
    per_candle = (run.cpu.get("steady", 0.0) - run.cpu.get("idle", 0.0)) / run.rate * 1e6
    report_line("  inference CPU per candle, steady (minus idle)", f"{per_candle:.0f} µs")
    report_line("load generator (this process) CPU steady / swaps / shadow",
                " / ".join(f"{run.own_cpu.get(p, float('nan')):.2f}" for p in ("steady", "swaps", "shadow")))
    report_line("bench publisher lateness p99 steady / swaps / shadow",
                " / ".join(f"{pct(run.lateness_ms.get(phase, []), 99):.2f}" for phase in ("steady", "swaps", "shadow"))
                + " ms")
    phases = ("steady", "swaps", "shadow")
    report_line("machine: all CPUs busy / stolen by the hypervisor, steady / swaps / shadow",
                " / ".join(f"{run.machine_share(p, 0):.0f}" for p in phases) + " % busy, "
                + " / ".join(f"{run.machine_share(p, 1):.1f}" for p in phases) + " % steal")
    relay_all = [v for values in run.relay_ms.values() for v in values]
    report_line("machine floor: relay (group read, stamp; no model) p50 / p99",
                f"{pct(relay_all, 50):.2f} / {pct(relay_all, 99):.2f} ms")
    report_line("  relay p99 before / after the flow",
                " / ".join(f"{pct(run.relay_ms.get(w, []), 99):.2f}" for w in ("before", "after")) + " ms")
    report_line("  steady p99 (µs clock) / relay p99", f"{pct(fine_steady, 99) / pct(relay_all, 99):.2f}×")
    report_line("machine floor: Redis PING RTT p50 / p99 (idle)",
                f"{pct(run.ping_ms, 50):.2f} / {pct(run.ping_ms, 99):.2f} ms")
    out(f"  ({sent} measured candles; latency from stream entry ids, 1 ms resolution, and on the µs clock from the "
        "events' occurred_at, which leaves out the prediction's own XADD; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)\n")
    return (steady_p99 <= GOAL_STEADY_P99_MS and ratio <= GOAL_SWAP_LATENCY_RATIO and missing == 0
            and pct(act_to_first, 99) <= GOAL_SWAP_P99_MS)


# ------------------------------------------------------------------------------------------- main


async def bench(args: argparse.Namespace) -> int:
    redis_url = redis_database(os.getenv("REDIS_URL", "redis://127.0.0.1:6379/0"), REDIS_DB)
    server_url = normalise_database_url(os.getenv("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"))
    phases = [("warm-up", WARMUP_SECONDS)]
    for _block in range(args.blocks):  # steady and swaps alternate: the host's drift falls on both alike
        phases += [("steady", args.steady / args.blocks), ("swaps", args.swaps / args.blocks)]
    if args.shadow > 0:
        phases += [("shadow-load", 1.0), ("shadow", args.shadow)]  # challengers load during the first second
    flow_count = int(sum(s for _p, s in phases) * args.rate) + 10
    data_dir = Path(tempfile.mkdtemp(prefix="tradeloop-bench-"))
    db_name, db_url = await create_database(server_url)
    redis = make_redis(redis_url)
    engine: AsyncEngine = make_engine(db_url)
    services = ServiceGroup(env={"REDIS_URL": redis_url, "DATABASE_URL": db_url, "TRADELOOP_DATA_DIR": str(data_dir),
                                 "TRADELOOP_LOG_LEVEL": os.getenv("BENCH_LOG_LEVEL", "WARNING")}, log_dir=data_dir / "logs")
    say = print
    try:
        t0 = time.perf_counter()
        await clear_streams(redis)
        await upgrade(engine)
        sessions = make_sessionmaker(engine)
        store = ArtifactStore(data_dir / "artifacts")
        publisher = EventPublisher(redis)
        candles = await synthetic_candles(HISTORY + flow_count)
        await insert_candles(sessions, [
            {"market": SLOT.market, "timeframe": SLOT.timeframe, "open_time": ms_to_datetime(c.open_time_ms),
             "open": c.open, "high": c.high, "low": c.low, "close": c.close, "volume": c.volume, "source": "bench"}
            for c in candles])
        versions = await asyncio.to_thread(train_versions, candles[:HISTORY], store, 3)
        registry = RegistryDeps(settings=RegistrySettings(admin_token=secrets.token_urlsafe(24)), sessions=sessions,
                                store=store, publisher=publisher, metrics=RegistryMetrics.create(None))
        for version in versions:
            await handle_model_trained(version.event, registry)
        await handle_activate(ActivateModel(version_id=versions[0].version_id, requested_by="bench"), registry)
        overhead = await asyncio.to_thread(predict_overhead, store, versions[0], candles[:HISTORY])
        baselines = {"features": await asyncio.to_thread(feature_overhead, candles[:HISTORY]),
                     "publish": await publish_overhead(redis), "command": await command_cpu(redis)}
        say(f"setup: {len(candles)} candles stored, {len(versions)} versions trained "
            f"({time.perf_counter() - t0:.1f} s); starting inference")
        service = services.start("inference")
        services.start("registry", extra_env={"TRADELOOP_ADMIN_TOKEN": secrets.token_urlsafe(24)})
        await asyncio.to_thread(services.wait_ready, 60.0)
        say(f"inference ready ({time.perf_counter() - t0:.1f} s); publishing {flow_count - 10} candles at "
            f"{args.rate:g}/s: " + ", ".join(f"{p} {s:g} s" for p, s in phases))
        run = Run(pid=service.process.pid, rate=args.rate)
        flow = prepare_candles(candles[HISTORY:])
        await measure_floor(redis, run)
        await measure_relay(redis, redis_url, run, "before")
        await asyncio.gather(
            publish_flow(publisher, flow, phases, args.rate, run),
            drive_control(publisher, versions, phases, args.swap_every, run),
        )
        for _ in range(150):  # up to 30 s for the backlog (acked = stored)
            if await drained(redis):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        await measure_relay(redis, redis_url, run, "after")
        ok = await analyse(redis, run, sessions, run.activations, service.port, overhead, baselines)
        say(f"total {time.perf_counter() - t0:.1f} s; service log: {service.log_path}")
        return 0 if ok else 1
    finally:
        codes = await asyncio.to_thread(services.stop_all)
        if any(code != 0 for code in codes.values()):
            say(f"inference exit codes {codes}; log kept in {data_dir / 'logs'}")
        await engine.dispose()
        await clear_streams(redis)
        await redis.aclose()
        await drop_database(server_url, db_name)
        if all(code == 0 for code in codes.values()) and not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=500.0, help="candles per second")
    parser.add_argument("--steady", type=float, default=12.0, help="seconds of steady flow")
    parser.add_argument("--swaps", type=float, default=12.0, help="seconds of flow with activations")
    parser.add_argument("--swap-every", type=float, default=2.0, help="seconds between activations")
    parser.add_argument("--blocks", type=int, default=3,
                        help="steady and swaps alternate in this many blocks each (1: all steady, then all swaps)")
    parser.add_argument("--shadow", type=float, default=10.0, help="seconds with two shadow challengers (0 = skip)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (logs, artifacts)")
    args = parser.parse_args()
    if args.blocks < 1:
        parser.error("--blocks must be at least 1")
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())

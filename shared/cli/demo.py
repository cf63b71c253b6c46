"""``tradeloop demo`` (and the end-to-end test): the whole loop, four services as processes.

candles arrive → retrain → the registry records the version → activation → inference hot-swaps
it → every later prediction carries the new version; then a second version is swapped in while
candles keep flowing, and the run checks that no candle was left without a prediction.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import func, select

from shared.broker import Redis, make_redis
from shared.cli.commands import open_database
from shared.cli.processes import ServiceGroup
from shared.db.models import Candle, ModelVersion, Prediction
from shared.messages import (
    ActivateModel,
    Family,
    Message,
    ModelSwapped,
    ModelTrained,
    RetrainFailed,
    RetrainModel,
    RetrainOverrides,
    Slot,
)
from shared.publishing import EventPublisher
from shared.settings import ServiceSettings
from shared.streams import Group, Stream
from shared.waiting import tail_ids, wait_for


def redis_database(url: str, db: int) -> str:
    """``url`` pointing at Redis database ``db``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


async def clear_streams(redis: Redis) -> None:
    """Delete tradeloop's keys (streams, dedupe keys) from the demo's Redis database."""
    async for key in redis.scan_iter(match="tradeloop*", count=1000):
        await redis.delete(key)


@dataclass
class LoopConfig:
    """Where and how long the loop runs."""

    redis_url: str
    database_url: str | None
    data_dir: Path
    slot: Slot
    flow_seconds: float = 12.0
    history_candles: int = 1500
    clock_speed: float = 120.0
    echo: bool = True
    exchange: str = "sim"
    """``sim``: ingest pulls from the simulated Bitvavo exchange through the real SDK; ``synthetic``: in-process."""


@dataclass
class LoopReport:
    """What the loop measured."""

    candles: int = 0
    versions: list[dict[str, Any]] = field(default_factory=list)
    champion: str | None = None
    predictions_per_version: dict[str, int] = field(default_factory=dict)
    swaps: list[dict[str, Any]] = field(default_factory=list)
    candles_after_first_swap: int = 0
    candles_without_prediction: int = 0
    exit_codes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (len(self.versions) >= 2 and self.candles_without_prediction == 0 and self.candles_after_first_swap > 0
                and all(code == 0 for code in self.exit_codes.values()))


ServiceHook = Callable[[ServiceGroup], Awaitable[None]]


class Loop:
    """Drives the services through the loop and collects a :class:`LoopReport`."""

    def __init__(self, config: LoopConfig, send: Callable[[Message], Awaitable[object]] | None = None,
                 on_ready: ServiceHook | None = None, while_running: ServiceHook | None = None) -> None:
        self.config = config
        self.on_ready = on_ready  # awaited once all four services are ready (e.g. start a Prometheus)
        self.while_running = while_running  # awaited after the last activation, before ingest is stopped
        self.redis = make_redis(config.redis_url)
        self.publisher = EventPublisher(self.redis)
        self.send = send or self.publisher.publish
        env = {
            "REDIS_URL": config.redis_url,
            "TRADELOOP_DATA_DIR": str(config.data_dir),
            "TRADELOOP_ADMIN_TOKEN": secrets.token_urlsafe(24),
            "TRADELOOP_MARKETS": config.slot.market,
            "TRADELOOP_TIMEFRAMES": config.slot.timeframe,
            "TRADELOOP_HISTORY_CANDLES": str(config.history_candles),
            "TRADELOOP_CLOCK_SPEED": str(config.clock_speed),
            "TRADELOOP_POLL_SECONDS": "0.2",
            "TRADELOOP_DEFAULT_MARKET": config.slot.market,
            "TRADELOOP_DEFAULT_TIMEFRAME": config.slot.timeframe,
        }
        if config.database_url:
            env["DATABASE_URL"] = config.database_url
        else:
            env["DATABASE_URL"] = ""
        self.services = ServiceGroup(env=env, log_dir=config.data_dir / "logs")
        self.settings = ServiceSettings(redis_url=config.redis_url, database_url=config.database_url,
                                        data_dir=config.data_dir)
        self.report = LoopReport()
        self._sim: subprocess.Popen[str] | None = None
        self.exchange_url: str | None = None  # the simulated exchange's REST URL once started

    def say(self, text: str) -> None:
        if self.config.echo:
            sys.stdout.write(f"{time.strftime('%H:%M:%S')}  {text}\n")
            sys.stdout.flush()

    def _start_sim_exchange(self) -> str:
        """Start ``tradeloop sim-exchange`` as a process and return its REST URL."""
        log = (self.config.data_dir / "logs")
        log.mkdir(parents=True, exist_ok=True)
        with (log / "sim-exchange.log").open("ab") as errors:
            self._sim = subprocess.Popen(
                [sys.executable, "-m", "shared.cli.main", "sim-exchange", "--port", "0", "--seed", "7",
                 "--markets", self.config.slot.market, "--speed", f"{self.config.clock_speed:g}"],
                stdout=subprocess.PIPE, stderr=errors, text=True)
        assert self._sim.stdout is not None
        url = self._sim.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"sim-exchange did not start (see {log / 'sim-exchange.log'})")
        return url

    def _stop_sim_exchange(self) -> None:
        if self._sim is not None and self._sim.poll() is None:
            self._sim.send_signal(signal.SIGINT)
            try:
                self._sim.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._sim.kill()
                self._sim.wait(timeout=10)
        if self._sim is not None and self._sim.stdout is not None:
            self._sim.stdout.close()

    async def run(self) -> LoopReport:
        try:
            await self._run()
        finally:
            self.report.exit_codes.update(await asyncio.to_thread(self.services.stop_all))
            self._stop_sim_exchange()
            await self.redis.aclose()
        return self.report

    async def _request(self, command: Message, answers: list[Stream], match: Any, timeout: float) -> Message:
        after = await tail_ids(self.redis, answers)
        await self.send(command)
        result = await wait_for(self.redis, answers, match, after=after, timeout=timeout)
        if result is None:
            raise TimeoutError(f"no answer to {type(command).__name__} within {timeout:g} s")
        return result

    async def retrain(self) -> ModelTrained:
        command = RetrainModel(slot=self.config.slot, overrides=RetrainOverrides(), requested_by="demo")
        cid = str(command.event_id)
        result = await self._request(
            command, [Stream.MODEL_TRAINED, Stream.RETRAIN_FAILED],
            lambda m: (isinstance(m, RetrainFailed) and str(m.command_event_id) == cid)
            or (isinstance(m, ModelTrained) and m.lineage.get("command_event_id") == cid), 180.0)
        if isinstance(result, RetrainFailed):
            raise RuntimeError(f"retrain failed: {result.error_code}: {result.message}")
        assert isinstance(result, ModelTrained)
        m = result.metrics
        self.say(f"      trained {result.version_id}: {result.training_samples} train / {result.validation_samples} "
                 f"validation samples, validation accuracy {m['validation_accuracy']:.3f}, "
                 f"validation MAE {m['validation_mae']:.5f}")
        await self._until(lambda: self._version_recorded(result.version_id), 30.0, "registry to record the version")
        self.say(f"      registry recorded {result.version_id}")
        return result

    async def activate(self, version_id: str) -> ModelSwapped:
        command = ActivateModel(version_id=version_id, requested_by="demo", reason="demo activation")
        started = time.perf_counter()
        result = await self._request(command, [Stream.MODEL_SWAPPED],
                                     lambda m: isinstance(m, ModelSwapped) and m.version_id == version_id, 60.0)
        assert isinstance(result, ModelSwapped)
        elapsed = time.perf_counter() - started
        self.report.swaps.append({"version": version_id, "command_to_swap_seconds": elapsed,
                                  "swapped_at": result.occurred_at,
                                  "load_seconds": result.load_seconds, "epoch": result.epoch})
        self.say(f"      inference swapped to {version_id} (epoch {result.epoch}): load+verify+warm-up "
                 f"{result.load_seconds * 1000:.1f} ms, command → serving {elapsed * 1000:.0f} ms, no restart")
        return result

    async def _version_recorded(self, version_id: str) -> bool:
        async with open_database(self.settings) as sessions, sessions() as session:
            return await session.get(ModelVersion, version_id) is not None

    async def _candle_count(self) -> int:
        async with open_database(self.settings) as sessions, sessions() as session:
            return int((await session.execute(select(func.count()).select_from(Candle))).scalar_one())

    async def _until(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not await check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(0.3)

    async def _drained(self) -> bool:
        group = await self._inference_group()
        return int(group["pending"]) == 0 and int(group.get("lag") or 0) == 0

    async def _inference_group(self) -> dict[Any, Any]:
        groups = await self.redis.xinfo_groups(Stream.CANDLE_CLOSED.value)
        return next(g for g in groups if g["name"] in (Group.INFERENCE.value, Group.INFERENCE.value.encode()))

    async def _drain(self) -> None:
        """Wait until inference has read and acked every candle; a timeout says where the group stands."""
        try:
            await self._until(self._drained, 60.0, "inference to drain the candle stream")
        except TimeoutError as error:
            consumers = await self.redis.xinfo_consumers(Stream.CANDLE_CLOSED.value, Group.INFERENCE.value)
            raise TimeoutError(f"{error}: group {await self._inference_group()}, consumers {consumers}") from None

    async def _run(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        await clear_streams(self.redis)
        self.say(f"[1/7] starting registry, trainer, inference, ingest (data in {cfg.data_dir}, "
                 f"database {'PostgreSQL' if cfg.database_url else 'embedded SQLite'}, Redis {cfg.redis_url})")
        ingest_env: dict[str, str] = {}
        if cfg.exchange == "sim":
            url = self.exchange_url = await asyncio.to_thread(self._start_sim_exchange)
            ingest_env = {"TRADELOOP_SOURCE": "bitvavo", "TRADELOOP_EXCHANGE_URL": url}
            self.say(f"      simulated Bitvavo exchange at {url} (real python-bitvavo-api client, "
                     f"{cfg.clock_speed:g}x clock)")
        for name in ("registry", "trainer", "inference"):
            self.services.start(name)
        self.services.start("ingest", extra_env=ingest_env)
        await asyncio.to_thread(self.services.wait_ready, 90.0)
        self.say("      all four services report ready")
        if self.on_ready is not None:
            await self.on_ready(self.services)
        await self._until(lambda: self._enough_candles(), 90.0, "the candle backfill")
        self.say(f"[2/7] ingest stored and published {await self._candle_count()} closed candles for {cfg.slot.key}")
        self.say("[3/7] retrain → trainer")
        first = await self.retrain()
        self.say(f"[4/7] activate {first.version_id} → registry → inference hot swap")
        await self.activate(first.version_id)
        self.say(f"[5/7] candles keep flowing for {cfg.flow_seconds:g} s ...")
        await asyncio.sleep(cfg.flow_seconds / 2)
        self.say("      retrain again while predicting")
        second = await self.retrain()
        self.say(f"[6/7] activate {second.version_id} while candles flow")
        await self.activate(second.version_id)
        await asyncio.sleep(cfg.flow_seconds / 2)
        if self.while_running is not None:
            await self.while_running(self.services)
        self.say("[7/7] stopping ingest, letting inference drain, checking every candle got a prediction")
        self.report.exit_codes["ingest"] = await asyncio.to_thread(self.services.stop, "ingest")
        await self._drain()
        await self._summarise()

    async def _enough_candles(self) -> bool:
        return await self._candle_count() >= self.config.history_candles

    async def _summarise(self) -> None:
        async with open_database(self.settings) as sessions, sessions() as session:
            self.report.candles = int((await session.execute(select(func.count()).select_from(Candle))).scalar_one())
            versions = (await session.execute(select(ModelVersion).order_by(ModelVersion.trained_at))).scalars()
            self.report.versions = [{"version": v.version_id, "validation_accuracy": v.validation_accuracy,
                                     "validation_mae": v.validation_mae} for v in versions]
            per_version = await session.execute(
                select(Prediction.version_id, func.count()).group_by(Prediction.version_id))
            self.report.predictions_per_version = {v: int(n) for v, n in per_version.all()}
            first = (await session.execute(select(func.min(Prediction.candle_open_time)))).scalar_one()
            if first is not None:
                after = select(Candle.open_time).where(Candle.open_time >= first)
                self.report.candles_after_first_swap = len((await session.execute(after)).all())
                predicted = select(Prediction.candle_open_time).distinct()
                missing = select(func.count()).select_from(Candle).where(
                    Candle.open_time >= first, Candle.open_time.not_in(predicted))
                self.report.candles_without_prediction = int((await session.execute(missing)).scalar_one())
        self.report.champion = self.report.swaps[-1]["version"] if self.report.swaps else None


def print_summary(report: LoopReport) -> None:
    """Print the final summary."""
    out = sys.stdout.write
    out("\n=== tradeloop demo summary ===\n")
    out(f"candles stored:               {report.candles}\n")
    out(f"versions:                     {', '.join(v['version'] for v in report.versions)}\n")
    out(f"champion:                     {report.champion}\n")
    for version, count in report.predictions_per_version.items():
        out(f"predictions by {version}:   {count}\n")
    for swap in report.swaps:
        out(f"swap to {swap['version']}:     load {swap['load_seconds'] * 1000:.1f} ms, "
            f"command → serving {swap['command_to_swap_seconds'] * 1000:.0f} ms\n")
    out(f"candles since first champion: {report.candles_after_first_swap}, "
        f"without a prediction: {report.candles_without_prediction}\n")
    out(f"service exit codes:           {report.exit_codes}\n")
    out(f"result:                       {'OK' if report.ok else 'FAILED'}\n")


def run_demo(args: Any) -> int:
    """Run the loop on embedded defaults (SQLite under var/demo, Redis database 15 of REDIS_URL)."""
    base = ServiceSettings()
    data_dir = Path(args.data_dir).resolve()
    shutil.rmtree(data_dir, ignore_errors=True)
    config = LoopConfig(
        redis_url=redis_database(base.redis_url, args.redis_db),
        database_url=None,
        data_dir=data_dir,
        slot=Slot(family=Family.XGBOOST, market="BTC-EUR", timeframe="1m"),
        flow_seconds=args.seconds,
    )
    try:
        report = asyncio.run(Loop(config).run())
    except (RuntimeError, TimeoutError) as error:
        sys.stderr.write(f"demo failed: {error}\nservice logs: {data_dir / 'logs'}\n")
        return 1
    print_summary(report)
    return 0 if report.ok else 1

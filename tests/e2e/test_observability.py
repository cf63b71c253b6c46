"""End to end: every Grafana panel's PromQL answers from a real Prometheus scraping the four services.

The demo loop runs the services as processes on the test Redis and PostgreSQL, ingest reading
candles from the loop's simulated Bitvavo exchange (120x accelerated). As soon as the services are ready, ``/usr/bin/prometheus`` (Debian's ``prometheus`` package) starts on loopback, scraping
them every second with deploy/prometheus/alerts.yml loaded. While the services still run, the test
drives what a short happy run does not produce on its own, through the services' public streams:

* a poison command (not JSON) → dead-lettered: DLQ length, handler exceptions, non-acked status,
  and the DeadLetterGrowing alert (so ``ALERTS{alertstate="firing"}`` has a series);
* a retrain that cannot succeed (min_samples far above the data) → failed run counter, RetrainFailures;
* an activation whose artifact does not exist, for another slot → inference's swap failure counter;
* a rate-limit ban from the exchange → ingest's ban counter and banned requests (which must be
  non-zero in Prometheus), after which ingest must fetch and store candles again;
* trades on predictions of both versions (TradeExecuted + TradeClosed → ingest joins them into
  training samples → TradeOutcomeRecorded → registry) → live accuracy, champion P&L, and (for the
  former champion, which the registry files under shadow P&L) ``tradeloop_shadow_pnl_total``.

Then every panel target of deploy/grafana/dashboards/*.json is evaluated through
``/api/v1/query`` and must succeed with at least one series, except targets that use a metric of
``KNOWN_PENDING`` (each with its reason). A pending metric that shows up (exposed on a /metrics
page or present in Prometheus) fails the test, so the list cannot rot. Annotations mark events
and may legitimately be empty; they must still evaluate. Finally ``tradeloop report`` renders
the run's database into HTML, and the services' JSON log files show the correlation ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.broker import Redis, make_redis
from shared.cli.demo import Loop, LoopConfig, redis_database
from shared.cli.processes import ServiceGroup, free_port
from shared.cli.report import SECTIONS, write_report
from shared.db.models import Prediction
from shared.db.models_registry import LiveScore
from shared.messages import (
    ArtifactRef,
    Family,
    ModelActivated,
    ModelActivationFailed,
    RetrainFailed,
    RetrainModel,
    RetrainOverrides,
    Slot,
    TradeClosed,
    TradeExecuted,
)
from shared.publishing import EventPublisher
from shared.settings import ServiceSettings
from shared.streams import Stream
from shared.waiting import tail_ids, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
CLOCK_SPEED = 120.0
SLOT = Slot(family=Family.XGBOOST, market="BTC-EUR", timeframe="1m")
BROKEN_SLOT = Slot(family=Family.CNN, market="BTC-EUR", timeframe="1m")
JOBS = ("registry", "ingest", "trainer", "inference")
EXPECTED_FIRING = {"DeadLetterGrowing", "RetrainFailures", "SwapFailures"}
"""Alerts without a ``for`` clause that the driven failures raise at once."""
BAN_SECONDS = 2.0
"""Length of the forced ban (wall seconds): several of ingest's polls (one per candle close, every
0.5 s at CLOCK_SPEED) fall into it."""
REDIS_DB = 10
"""A Redis database of its own: other sessions' tests clear database 9's tradeloop keys while they run."""

# Grafana's built-in variables → fixed values; any other ($slot, ${market}) → ".*" (all).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
_OTHER_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")

DRIVEN_VALUES = {
    "ingest's ban counter": "sum(tradeloop_exchange_bans_total) > 0",
    "ingest's banned requests": 'sum(tradeloop_exchange_requests_total{status="banned"}) > 0',
}
"""What the driven ban must show in Prometheus: its panels answer ``or vector(0)`` / increase() of a
counter that exists from the start, so a series alone does not prove the ban was seen."""

NOT_EXPOSED = "no service exposes it yet"
KNOWN_PENDING: dict[str, str] = {
    "tradeloop_candles_rejected_total": (
        "exposed, but only an invalid candle (bad OHLC, misaligned time) increments it, and neither the "
        "synthetic source nor the simulated exchange ever serves one"
    ),
}
"""Series that dashboards use and this run cannot produce (PromQL selector → reason). Targets using
the metric must still evaluate without error; the selector must match nothing (and a NOT_EXPOSED
metric must be on no /metrics page), otherwise the entry is stale: remove it."""


# --------------------------------------------------------------------------- dashboards


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


@dataclass(frozen=True)
class Query:
    where: str
    expr: str
    annotation: bool = False

    @property
    def promql(self) -> str:
        expr = self.expr
        for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
            expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
        return _OTHER_VARIABLE.sub(".*", expr)

    @property
    def pending(self) -> list[str]:
        return [selector for selector in KNOWN_PENDING if re.search(rf"\b{_name(selector)}\b", self.expr)]


def _name(selector: str) -> str:
    return selector.split("{", 1)[0]


def dashboard_queries() -> list[Query]:
    queries = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in _panels(board["panels"]):
            for number, target in enumerate(panel.get("targets", [])):
                queries.append(Query(f"{path.name}: {panel.get('title')} [{target.get('refId', number)}]",
                                     target["expr"]))
        for annotation in board.get("annotations", {}).get("list", []):
            if "expr" in annotation:
                queries.append(Query(f"{path.name}: annotation {annotation.get('name')}", annotation["expr"], True))
    return queries


# --------------------------------------------------------------------------- Prometheus


@dataclass
class Prometheus:
    """A Prometheus process on loopback with temporary storage."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, binary: str, targets: dict[str, list[int]]) -> None:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERT_RULES)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}" for port in ports]}]}
                for job, ports in targets.items()
            ],
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        config_file = self.directory / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        log = (self.directory / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config_file}", f"--storage.tsdb.path={self.directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def log_tail(self) -> str:
        path = self.directory / "prometheus.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-20:]) if path.exists() else ""

    async def wait_ready(self, client: httpx.AsyncClient, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, f"prometheus exited:\n{self.log_tail()}"
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{self.url}/-/ready")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
        pytest.fail(f"prometheus not ready after {timeout:g} s:\n{self.log_tail()}")

    async def query(self, client: httpx.AsyncClient, promql: str) -> list[dict[str, Any]]:
        """Instant query; fails the test on any error."""
        response = await client.get(f"{self.url}/api/v1/query", params={"query": promql})
        payload = response.json()
        assert response.status_code == 200 and payload.get("status") == "success", (promql, payload)
        data = payload["data"]
        assert data["resultType"] in {"vector", "matrix"}, (promql, data["resultType"])  # a scalar is no panel
        result: list[dict[str, Any]] = data["result"]
        return result


# --------------------------------------------------------------------------- driving the run


async def _expect(redis: Redis, answers: list[Stream], match: Any, send: Any, what: str) -> Any:
    after = await tail_ids(redis, answers)
    await send()
    result = await wait_for(redis, answers, match, after=after, timeout=30.0)
    assert result is not None, f"no answer: {what}"
    return result


async def _until(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def drive_the_rare_paths(
    redis: Redis, sessions: async_sessionmaker[AsyncSession], client: httpx.AsyncClient, exchange_url: str,
    ingest_url: str,
) -> dict[str, str]:
    """Produce a dead letter, a failed retrain, a failed swap, a ban and scored trades; return ids."""
    publisher = EventPublisher(redis)

    poison = Stream.ARCHIVE_MODEL
    await redis.xadd(poison.value, {"__data__": b"this is not json"})
    await _until(lambda: _xlen(redis, poison.dlq), "the poison command to be dead-lettered")

    failing = RetrainModel(slot=SLOT, overrides=RetrainOverrides(min_samples=10_000_000), requested_by="e2e")
    failed = await _expect(
        redis, [Stream.RETRAIN_FAILED],
        lambda m: isinstance(m, RetrainFailed) and m.command_event_id == failing.event_id,
        lambda: publisher.publish(failing), "the impossible retrain")
    assert failed.error_code == "insufficient_samples"

    broken = ModelActivated(
        slot=BROKEN_SLOT, version_id="v-missing-artifact", previous_version_id=None, epoch=1,
        artifact=ArtifactRef(sha256="0" * 64, path="manifests/does-not-exist.json", size=1),
        feature_schema_hash="0" * 64, actor="e2e", reason="an artifact that cannot be loaded")
    await _expect(redis, [Stream.MODEL_ACTIVATION_FAILED],
                  lambda m: isinstance(m, ModelActivationFailed) and m.version_id == broken.version_id,
                  lambda: publisher.publish(broken), "the failed swap")

    await ban_ingest(client, exchange_url.removesuffix("/v2") + "/_sim", ingest_url)

    async with sessions() as session:
        versions = (await session.execute(
            select(Prediction.version_id).group_by(Prediction.version_id).order_by(func.min(Prediction.created_at))
        )).scalars().all()
        assert len(versions) == 2, versions
        picked = {version: (await session.execute(
            select(Prediction).where(Prediction.version_id == version).order_by(Prediction.created_at.desc()).limit(3)
        )).scalars().all() for version in versions}
    trades = 0
    for version, predictions in picked.items():
        for n, prediction in enumerate(predictions):
            win = (n + (version == versions[-1])) % 2 == 1
            side = "SELL" if prediction.action == "SELL" else "BUY"
            up = win == (side == "BUY")
            opened = prediction.candle_open_time + timedelta(minutes=1)
            await publisher.publish(TradeExecuted(
                prediction_id=uuid.UUID(prediction.prediction_id), market=SLOT.market, side=side,
                entry_price=100.0, quantity=2.0, executed_at=opened, fee=0.05))
            await publisher.publish(TradeClosed(
                prediction_id=uuid.UUID(prediction.prediction_id), exit_price=102.0 if up else 98.5,
                closed_at=opened + timedelta(minutes=5), fee=0.05))
            trades += 1

    async def scored() -> bool:
        async with sessions() as session:
            return int((await session.execute(select(func.count()).select_from(LiveScore))).scalar_one()) >= trades

    await _until(scored, "ingest to record the trades and the registry to score them")
    return {"failing_retrain": str(failing.event_id), "champion": versions[-1], "former": versions[0]}


@dataclass(frozen=True)
class ExchangeCounts:
    """What ingest's /metrics page says about its exchange requests and candles."""

    bans: float
    banned_requests: float
    ok_requests: float
    newest_open_time: float

    @classmethod
    async def scrape(cls, client: httpx.AsyncClient, ingest_url: str) -> ExchangeCounts:
        page = (await client.get(f"{ingest_url}/metrics")).text
        samples = [sample for family in text_string_to_metric_families(page) for sample in family.samples]

        def total(name: str, **labels: str) -> float:
            return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

        newest = [s.value for s in samples if s.name == "tradeloop_candle_newest_open_time_seconds"]
        return cls(bans=total("tradeloop_exchange_bans_total"),
                   banned_requests=total("tradeloop_exchange_requests_total", status="banned"),
                   ok_requests=total("tradeloop_exchange_requests_total", status="ok"),
                   newest_open_time=max(newest, default=0.0))


async def _exchange_statuses(client: httpx.AsyncClient, admin: str) -> dict[str, int]:
    stats = (await client.get(f"{admin}/stats")).json()
    return {status: int(count) for status, count in stats["statuses"].items()}


async def ban_ingest(client: httpx.AsyncClient, admin: str, ingest_url: str) -> None:
    """Ban every caller of the simulated exchange for BAN_SECONDS; ingest must run into it, count it
    and, once the ban has expired, fetch and store candles again."""
    before = await ExchangeCounts.scrape(client, ingest_url)
    served_429 = (await _exchange_statuses(client, admin)).get("429", 0)
    (await client.post(f"{admin}/faults", json={"force_ban_s": BAN_SECONDS})).raise_for_status()

    async def answered_429() -> bool:
        return (await _exchange_statuses(client, admin)).get("429", 0) > served_429

    async def counted() -> bool:
        now = await ExchangeCounts.scrape(client, ingest_url)
        return now.bans > before.bans and now.banned_requests > before.banned_requests

    await _until(answered_429, "ingest to hit the exchange's ban")
    await _until(counted, "ingest to count the ban in its metrics")
    # Every request after a 429 waits for the ban's expiry (the client blocks its budget until then),
    # so a successful request and a newer candle from here on prove that ingest recovered.
    banned = await ExchangeCounts.scrape(client, ingest_url)

    async def recovered() -> bool:
        now = await ExchangeCounts.scrape(client, ingest_url)
        return now.ok_requests > banned.ok_requests and now.newest_open_time > banned.newest_open_time

    await _until(recovered, "ingest to fetch and store candles again after the ban")


async def _xlen(redis: Redis, stream: str) -> bool:
    return int(await redis.xlen(stream)) > 0


def exposed_names(page: str) -> set[str]:
    """Every sample name a /metrics page can hold, also of families without samples yet."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created"), "info": ("_info",), "gauge": ("",)}
    names = set()
    for family in text_string_to_metric_families(page):
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


async def evaluate_dashboards(
    prometheus: Prometheus, client: httpx.AsyncClient, services: ServiceGroup, timeout: float = 25.0
) -> dict[str, Any]:
    """Query every dashboard target until each answers with series (or the timeout); return findings."""
    queries = dashboard_queries()
    assert queries
    waiting = [q for q in queries if not q.annotation and not q.pending]
    deadline = time.monotonic() + timeout
    while True:
        empty = [q for q in waiting if not await prometheus.query(client, q.promql)]
        if not empty or time.monotonic() > deadline:
            break
        waiting = empty
        await asyncio.sleep(1.0)
    for q in queries:  # the rest must at least evaluate
        if q.annotation or q.pending:
            await prometheus.query(client, q.promql)
    firing: set[str] = set()
    deadline = time.monotonic() + 15.0  # of their own: a panel left empty must not leave the alerts no time
    while not firing.issuperset(EXPECTED_FIRING) and time.monotonic() < deadline:
        alerts = await prometheus.query(client, 'ALERTS{alertstate="firing"}')
        firing = {alert["metric"]["alertname"] for alert in alerts}
        await asyncio.sleep(0.5)
    rules = (await client.get(f"{prometheus.url}/api/v1/rules")).json()["data"]["groups"]
    unhealthy = [(r["name"], r["health"], r.get("lastError")) for g in rules for r in g["rules"] if r["health"] != "ok"]
    pages = {}
    for name, service in services.processes.items():
        pages[name] = (await client.get(f"{service.base_url}/metrics")).text
    exposed = {metric for page in pages.values() for metric in exposed_names(page)}
    present = {selector for selector in KNOWN_PENDING if await prometheus.query(client, f"count({selector})")}
    up = await prometheus.query(client, 'up{job=~"registry|ingest|trainer|inference"} == 1')
    unseen = [what for what, promql in DRIVEN_VALUES.items() if not await prometheus.query(client, promql)]
    return {"empty": empty, "unseen": unseen, "exposed": exposed, "present": present, "up": {s["metric"]["job"] for s in up},
            "queries": queries, "firing": firing, "unhealthy_rules": unhealthy,
            "rules": {r["name"] for g in rules for r in g["rules"]}}


# --------------------------------------------------------------------------- the test


class _Sections(HTMLParser):
    """Sections (data-section) of the report and the data-points of the charts inside each."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.points: dict[str, list[int]] = {}
        self.depth = 0
        self.current: tuple[str, int] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section":
            self.depth += 1
            if values.get("data-section"):
                self.current = (str(values["data-section"]), self.depth)
                self.points.setdefault(self.current[0], [])
        if tag == "figure" and self.current and values.get("data-points"):
            self.points[self.current[0]].append(int(str(values["data-points"])))

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            if self.current and self.current[1] == self.depth:
                self.current = None
            self.depth -= 1


@pytest.fixture
def observed_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Service processes inherit this environment: fast stream health, JSON logs to rotating files."""
    logs = tmp_path / "service-logs"
    monkeypatch.setenv("TRADELOOP_STREAM_HEALTH_SECONDS", "1")
    monkeypatch.setenv("TRADELOOP_LOG_JSON", "1")
    monkeypatch.setenv("TRADELOOP_LOG_FILE", str(logs / "{service}.jsonl"))
    return logs


@pytest.fixture
def prometheus_binary(debian_tool: Callable[[str], str]) -> str:
    """Debian's ``prometheus`` package; without it the test fails under CI=true and is skipped elsewhere."""
    return debian_tool("prometheus")


async def test_every_dashboard_panel_answers_from_a_real_prometheus(
    redis_url: str, database_url: str, clean_database: async_sessionmaker[AsyncSession], observed_env: Path,
    prometheus_binary: str, tmp_path: Path,
) -> None:
    redis_url = redis_database(redis_url, REDIS_DB)
    prometheus = Prometheus(tmp_path / "prometheus")
    findings: dict[str, Any] = {}
    driven: dict[str, str] = {}
    redis = make_redis(redis_url)

    async def on_ready(services: ServiceGroup) -> None:
        prometheus.start(prometheus_binary, {name: [services.processes[name].port] for name in JOBS})

    async def while_running(services: ServiceGroup) -> None:
        async with httpx.AsyncClient(timeout=10.0) as client:
            await prometheus.wait_ready(client)
            assert loop.exchange_url, "the loop runs ingest on its simulated exchange"
            driven.update(await drive_the_rare_paths(redis, clean_database, client, loop.exchange_url,
                                                     services.processes["ingest"].base_url))
            findings.update(await evaluate_dashboards(prometheus, client, services))

    config = LoopConfig(redis_url=redis_url, database_url=database_url, data_dir=tmp_path / "loop", slot=SLOT,
                        flow_seconds=4.0, history_candles=1000, clock_speed=CLOCK_SPEED, echo=False)
    loop = Loop(config, on_ready=on_ready, while_running=while_running)
    try:
        report = await loop.run()
    finally:
        prometheus.stop()
        await redis.aclose()
    assert report.ok, report

    # Every panel answers; nothing pending has appeared; every service was scraped; the alert rules
    # evaluate without error, and the alerts the driven failures must raise are firing.
    assert findings["up"] == set(JOBS)
    assert findings["rules"] == {rule["alert"] for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]
                                 for rule in group["rules"]}
    assert not findings["unhealthy_rules"], findings["unhealthy_rules"]
    empty = [f"{q.where}: {q.promql}" for q in findings["empty"]]
    assert not empty, "dashboard queries without any series:\n" + "\n".join(empty)
    assert findings["firing"].issuperset(EXPECTED_FIRING), findings["firing"]
    assert not findings["unseen"], f"driven failures Prometheus did not see: {findings['unseen']}"
    pending_used = {name for q in findings["queries"] for name in q.pending}
    assert pending_used == set(KNOWN_PENDING), f"KNOWN_PENDING names no dashboard uses: {set(KNOWN_PENDING) - pending_used}"
    rotten = sorted(findings["present"] | {s for s, reason in KNOWN_PENDING.items()
                                           if reason == NOT_EXPOSED and _name(s) in findings["exposed"]})
    assert not rotten, f"metrics in KNOWN_PENDING are produced now, remove them from the list: {rotten}"

    # tradeloop report renders the run: every section, charts with points where the run has data.
    out = tmp_path / "report.html"
    data = await write_report(ServiceSettings(redis_url=redis_url, database_url=database_url), out, SLOT.key)
    assert [s.key for s in data.slots] == [SLOT.key]
    html = out.read_text()
    sections = _Sections()
    sections.feed(html)
    assert set(sections.points) == set(SECTIONS)
    for name in ("versions", "predictions", "accuracy", "pnl"):
        assert sections.points[name] and all(n > 0 for n in sections.points[name]), (name, sections.points[name])
    assert driven["champion"] in html and driven["former"] in html
    assert "Realised trade outcomes" in html  # the trades ingest joined into training samples
    assert "No shadow challenger has been scored" in html  # said, not silently blank
    assert "No version of this slot carries backtest metrics" in html  # xgboost only in this run

    # Correlation: the trainer's log lines about the impossible retrain carry its event id.
    trainer_lines = [json.loads(line) for line in (observed_env / "trainer.jsonl").read_text().splitlines()]
    about = [line for line in trainer_lines if line.get("event_id") == driven["failing_retrain"]]
    assert about and all(line["stream"] == Stream.RETRAIN_MODEL.value for line in about), trainer_lines[-5:]
    registry_lines = [json.loads(line) for line in (observed_env / "registry.jsonl").read_text().splitlines()]
    assert any(line.get("stream") == Stream.ARCHIVE_MODEL.value and "dead-lettered" in line["message"]
               for line in registry_lines)

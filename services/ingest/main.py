"""Composition root of the ingest service.

Candles come from ``TRADELOOP_SOURCE``: ``synthetic`` (default) or ``csv`` through
:class:`IngestRunner`, or ``bitvavo`` (the exchange, or the simulated one at
``TRADELOOP_EXCHANGE_URL``) through :class:`ExchangeIngestor`. Whatever the source, the service
also consumes TradeExecuted / TradeClosed (streams and ``POST /trades/*``) and joins them into
training samples; a sweep retries waiting trade events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from services.ingest.api import build_api
from services.ingest.backfill import ExchangeIngestor
from services.ingest.exchange.bitvavo import BitvavoClient, BitvavoClientConfig
from services.ingest.fills import import_fills
from services.ingest.handlers import StoreDeps
from services.ingest.locks import SeriesLocks
from services.ingest.metrics import IngestMetrics
from services.ingest.outcomes import OutcomeDeps, sweep
from services.ingest.planning import load_regimes
from services.ingest.runner import IngestRunner
from services.ingest.settings import IngestSettings
from services.ingest.sources import CandleSource, FileSource, SyntheticSource
from services.ingest.subscribers import build_router
from shared.bootstrap import Infrastructure
from shared.messages import timeframe_seconds
from shared.runtime import ServiceRuntime, run_service
from shared.settings import load_settings
from shared.streams import Group
from shared.tasks import cancel_and_wait, pause

log = logging.getLogger(__name__)


def build_source(settings: IngestSettings) -> tuple[CandleSource, int | None]:
    """Return the configured synthetic/csv source and the open time to start the backfill from."""
    if settings.source == "csv":
        if settings.csv_path is None:
            raise ValueError("TRADELOOP_CSV_PATH is required with TRADELOOP_SOURCE=csv")
        return FileSource(settings.csv_path), None
    source = SyntheticSource(
        seed=settings.synthetic_seed,
        anchor=settings.synthetic_anchor,
        history_candles=settings.history_candles,
        speed=settings.clock_speed,
    )
    smallest = min(timeframe_seconds(t) for t in settings.timeframes) * 1000
    return source, source.origin_ms(smallest)


def exchange_client(settings: IngestSettings, metrics: IngestMetrics | None = None) -> BitvavoClient:
    """The Bitvavo client the settings describe (the real exchange or the sim)."""
    config = BitvavoClientConfig(
        rest_url=settings.exchange_url,
        api_key=settings.exchange_api_key.get_secret_value() if settings.exchange_api_key else None,
        api_secret=settings.exchange_api_secret.get_secret_value() if settings.exchange_api_secret else None,
        timeout_s=settings.exchange_timeout_seconds,
        rate_limit=settings.exchange_rate_limit,
        rate_reserve=min(settings.exchange_rate_reserve, settings.exchange_rate_limit - 1),
    )
    return BitvavoClient(config, observer=metrics)


async def _every(seconds: float, what: str, job: Callable[[], Awaitable[object]]) -> None:
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; retrying in %.0f s", what, seconds)
        await pause(seconds)


def build(settings: IngestSettings) -> ServiceRuntime:
    """Wire the ingest service (no I/O until started)."""
    infra = Infrastructure.build(settings, groups=[Group.INGEST])
    metrics = IngestMetrics.create(infra.registry)
    outcomes = OutcomeDeps(
        sessions=infra.sessions,
        publisher=infra.publisher,
        metrics=metrics,
        neutral_band=settings.neutral_band,
        wait_seconds=settings.outcome_wait_seconds,
    )
    infra.broker.include_router(build_router(outcomes, settings))
    jobs: list[Callable[[], Coroutine[Any, Any, None]]] = []
    if settings.source == "bitvavo":
        client = exchange_client(settings, metrics)
        ingestor = ExchangeIngestor(
            settings=settings,
            client=client,
            store=StoreDeps(infra.sessions, infra.publisher, metrics),
            locks=SeriesLocks(infra.redis, settings.lock_seconds),
            regimes=load_regimes(settings.market_regimes_file),
        )
        jobs.append(ingestor.follow if settings.live else _once(ingestor.run_once))
        if settings.has_exchange_keys:
            markets = list(settings.markets)
            jobs.append(
                lambda: _every(
                    settings.fills_poll_seconds,
                    "fill import",
                    lambda: import_fills(client, infra.sessions, markets, metrics),
                )
            )
    else:
        source, start_ms = build_source(settings)
        runner = IngestRunner(
            source=source,
            markets=list(settings.markets),
            timeframes=list(settings.timeframes),
            start_ms=start_ms,
            batch_size=settings.batch_size,
            sessions=infra.sessions,
            publisher=infra.publisher,
            metrics=metrics,
        )
        jobs.append((lambda: runner.follow(settings.poll_seconds)) if settings.live else _once(runner.run_once))
    jobs.append(lambda: _every(settings.outcome_sweep_seconds, "trade event sweep", lambda: sweep(outcomes)))

    app = infra.application("ingest")
    tasks: list[asyncio.Task[None]] = []

    async def start_loops() -> None:
        tasks.extend(asyncio.create_task(job()) for job in jobs)

    async def stop_loops() -> None:
        await cancel_and_wait(*tasks)

    app.after_startup(start_loops)
    app.on_shutdown(stop_loops)
    return infra.runtime(
        "ingest",
        app,
        routers=[build_api(outcomes, list(settings.markets), list(settings.timeframes), settings.api_token)],
    )


def _once(run: Callable[[], Awaitable[object]]) -> Callable[[], Coroutine[Any, Any, None]]:
    async def once() -> None:
        try:
            await run()
        except Exception:
            log.exception("ingest pass failed")

    return once


def main() -> None:
    """Run the ingest service until SIGINT/SIGTERM."""
    settings = load_settings(IngestSettings)
    run_service(settings, build)

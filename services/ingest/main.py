"""Composition root of the ingest service."""

from __future__ import annotations

import asyncio
import contextlib

from faststream import AsyncAPI, FastStream

from services.ingest.handlers import IngestMetrics
from services.ingest.runner import IngestRunner
from services.ingest.settings import IngestSettings
from services.ingest.sources import CandleSource, FileSource, SyntheticSource
from shared.bootstrap import Infrastructure
from shared.logs import setup_logging
from shared.messages import timeframe_seconds
from shared.runtime import ServiceRuntime, serve
from shared.settings import load_settings


def build_source(settings: IngestSettings) -> tuple[CandleSource, int | None]:
    """Return the configured source and the open time to start the backfill from."""
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


def build(settings: IngestSettings) -> ServiceRuntime:
    """Wire the ingest service (no I/O until started)."""
    infra = Infrastructure.build(settings)
    source, start_ms = build_source(settings)
    runner = IngestRunner(
        source=source,
        markets=list(settings.markets),
        timeframes=list(settings.timeframes),
        start_ms=start_ms,
        batch_size=settings.batch_size,
        sessions=infra.sessions,
        publisher=infra.publisher,
        metrics=IngestMetrics.create(infra.registry),
    )
    app = FastStream(infra.broker, specification=AsyncAPI(title="tradeloop ingest", version="0.1.0"))
    tasks: list[asyncio.Task[None]] = []

    async def start_loop() -> None:
        if settings.live:
            tasks.append(asyncio.create_task(runner.follow(settings.poll_seconds)))
        else:
            tasks.append(asyncio.create_task(_once(runner)))

    async def stop_loop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.on_startup(infra.prepare)
    app.after_startup(start_loop)
    app.on_shutdown(stop_loop)
    return ServiceRuntime(
        name="ingest",
        app=app,
        broker=infra.broker,
        registry=infra.registry,
        host=settings.http_host,
        port=settings.http_port,
        readiness=[infra.check_database],
        on_stop=[infra.close],
    )


async def _once(runner: IngestRunner) -> None:
    await runner.run_once()


def main() -> None:
    """Run the ingest service until SIGINT/SIGTERM."""
    settings = load_settings(IngestSettings)
    setup_logging("ingest", settings.log_level, settings.log_json)
    asyncio.run(serve(build(settings)))

"""Composition root of the inference service."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from faststream import AsyncAPI, FastStream

from services.inference.handlers import InferenceMetrics, InferenceState, reconcile
from services.inference.settings import InferenceSettings
from services.inference.subscribers import build_router
from services.inference.windows import CandleWindows
from shared.bootstrap import Infrastructure
from shared.logs import setup_logging
from shared.runtime import ServiceRuntime, serve
from shared.settings import load_settings
from shared.streams import Group

log = logging.getLogger(__name__)


def build(settings: InferenceSettings) -> ServiceRuntime:
    """Wire inference (no I/O until started)."""
    infra = Infrastructure.build(settings, groups=[Group.INFERENCE])
    state = InferenceState(
        settings=settings,
        sessions=infra.sessions,
        store=infra.store,
        publisher=infra.publisher,
        metrics=InferenceMetrics.create(infra.registry),
        windows=CandleWindows(infra.sessions),
    )
    infra.broker.include_router(build_router(state))
    app = FastStream(infra.broker, specification=AsyncAPI(title="tradeloop inference", version="0.1.0"))
    tasks: list[asyncio.Task[None]] = []

    async def reconcile_forever() -> None:
        while True:
            await asyncio.sleep(settings.reconcile_seconds)
            try:
                await reconcile(state)
            except Exception:
                log.exception("periodic reconcile failed")

    async def start_reconciling() -> None:
        await reconcile(state)  # after the activation subscriber started: no event can slip between
        tasks.append(asyncio.create_task(reconcile_forever()))

    async def stop_reconciling() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.on_startup(infra.prepare)
    app.after_startup(start_reconciling)
    app.on_shutdown(stop_reconciling)
    return ServiceRuntime(
        name="inference",
        app=app,
        broker=infra.broker,
        registry=infra.registry,
        host=settings.http_host,
        port=settings.http_port,
        readiness=[infra.check_database],
        on_stop=[infra.close],
    )


def main() -> None:
    """Run inference until SIGINT/SIGTERM."""
    settings = load_settings(InferenceSettings)
    setup_logging("inference", settings.log_level, settings.log_json)
    asyncio.run(serve(build(settings)))

"""Composition root of the trainer service."""

from __future__ import annotations

import asyncio

from faststream import AsyncAPI, FastStream

from services.trainer.handlers import TrainerDeps, TrainerMetrics
from services.trainer.scheduler import RetrainScheduler
from services.trainer.settings import TrainerSettings
from services.trainer.subscribers import build_router
from shared.bootstrap import Infrastructure
from shared.logs import setup_logging
from shared.observability import observe
from shared.runtime import ServiceRuntime, serve
from shared.settings import load_settings
from shared.streams import Group


def build(settings: TrainerSettings) -> ServiceRuntime:
    """Wire the trainer (no I/O until started)."""
    infra = Infrastructure.build(settings, groups=[Group.TRAINER])
    deps = TrainerDeps(
        settings=settings,
        sessions=infra.sessions,
        store=infra.store,
        publisher=infra.publisher,
        metrics=TrainerMetrics.create(infra.registry),
    )
    infra.broker.include_router(build_router(deps, infra.redis))
    app = FastStream(infra.broker, specification=AsyncAPI(title="tradeloop trainer", version="0.1.0"))
    observe(app, infra)
    scheduler = RetrainScheduler(settings, infra.publisher)
    app.on_startup(infra.prepare)
    app.after_startup(scheduler.start)
    app.on_shutdown(scheduler.stop)
    return ServiceRuntime(
        name="trainer",
        app=app,
        broker=infra.broker,
        registry=infra.registry,
        host=settings.http_host,
        port=settings.http_port,
        readiness=[infra.check_database],
        on_stop=[infra.close],
    )


def main() -> None:
    """Run the trainer until SIGINT/SIGTERM."""
    settings = load_settings(TrainerSettings)
    setup_logging("trainer", settings.log_level, settings.log_json, settings.log_file)
    asyncio.run(serve(build(settings)))

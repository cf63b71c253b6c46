"""Composition root of the trainer service."""

from __future__ import annotations

from services.trainer.handlers import TrainerDeps, TrainerMetrics
from services.trainer.scheduler import RetrainScheduler
from services.trainer.settings import TrainerSettings
from services.trainer.subscribers import build_router
from shared.bootstrap import Infrastructure
from shared.runtime import ServiceRuntime, run_service
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
    app = infra.application("trainer")
    scheduler = RetrainScheduler(settings, infra.publisher)
    app.after_startup(scheduler.start)
    app.on_shutdown(scheduler.stop)
    return infra.runtime("trainer", app)


def main() -> None:
    """Run the trainer until SIGINT/SIGTERM."""
    settings = load_settings(TrainerSettings)
    run_service(settings, build)

"""Composition root of the registry service."""

from __future__ import annotations

from services.registry.api import build_api
from services.registry.handlers import RegistryDeps, RegistryMetrics
from services.registry.settings import RegistrySettings
from services.registry.subscribers import build_router
from shared.bootstrap import Infrastructure
from shared.runtime import ServiceRuntime, run_service
from shared.settings import load_settings
from shared.streams import Group


def build(settings: RegistrySettings) -> ServiceRuntime:
    """Wire the registry (no I/O until started)."""
    infra = Infrastructure.build(settings, groups=[Group.REGISTRY])
    deps = RegistryDeps(
        settings=settings,
        sessions=infra.sessions,
        store=infra.store,
        publisher=infra.publisher,
        metrics=RegistryMetrics.create(infra.registry),
    )
    infra.broker.include_router(build_router(deps))
    app = infra.application("registry")
    return infra.runtime("registry", app, routers=[build_api(deps, infra.redis)], on_stop=[deps.verifier.close])


def main() -> None:
    """Run the registry until SIGINT/SIGTERM."""
    settings = load_settings(RegistrySettings)
    run_service(settings, build)

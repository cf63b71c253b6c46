"""Composition root of the registry service."""

from __future__ import annotations

import asyncio

from services.registry.api import build_api
from services.registry.handlers import RegistryDeps, RegistryMetrics
from services.registry.settings import RegistrySettings
from services.registry.subscribers import build_router
from shared.bootstrap import Infrastructure
from shared.logs import setup_logging
from shared.priority import apply_cpu_policy
from shared.runtime import ServiceRuntime, serve
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
    return infra.runtime("registry", app, routers=[build_api(deps, infra.redis)])


def main() -> None:
    """Run the registry until SIGINT/SIGTERM."""
    settings = load_settings(RegistrySettings)
    setup_logging("registry", settings.log_level, settings.log_json, settings.log_file)
    apply_cpu_policy(settings.cpu_policy)  # first: the threads started later inherit it
    asyncio.run(serve(build(settings)))

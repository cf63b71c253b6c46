"""Running a service: FastStream app + HTTP (health, metrics, service routes) in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import uvicorn
from fastapi import APIRouter, FastAPI, Response
from faststream import FastStream
from faststream.redis import RedisBroker
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shared.logs import setup_logging
from shared.priority import apply_cpu_policy
from shared.settings import SettingsT
from shared.tasks import all_task_stacks

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[None]]


@dataclass
class ServiceRuntime:
    """What a composition root hands to :func:`serve`."""

    name: str
    app: FastStream
    broker: RedisBroker
    registry: CollectorRegistry
    host: str
    port: int
    routers: Sequence[APIRouter] = ()
    readiness: Sequence[ReadinessCheck] = ()
    on_stop: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=list)


def build_http_app(runtime: ServiceRuntime) -> FastAPI:
    """Return the service's HTTP app: ``/health/live``, ``/health/ready``, ``/metrics`` + its routers."""
    http = FastAPI(title=f"tradeloop {runtime.name}", version="0.1.0")

    @http.get("/health/live", tags=["health"])
    async def live() -> dict[str, str]:
        return {"status": "ok", "service": runtime.name}

    @http.get("/health/ready", tags=["health"])
    async def ready(response: Response) -> dict[str, str]:
        try:
            await asyncio.wait_for(runtime.broker.ping(timeout=2.0), timeout=3.0)
            for check in runtime.readiness:
                await asyncio.wait_for(check(), timeout=3.0)
        except Exception as error:
            response.status_code = 503
            return {"status": "unavailable", "service": runtime.name, "error": repr(error)}
        return {"status": "ok", "service": runtime.name}

    @http.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        return Response(generate_latest(runtime.registry), media_type=CONTENT_TYPE_LATEST)

    for router in runtime.routers:
        http.include_router(router)
    return http


class _Server(uvicorn.Server):
    """uvicorn without its own signal capture: :func:`serve` owns SIGINT/SIGTERM for the whole process."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


def run_service(settings: SettingsT, build: Callable[[SettingsT], ServiceRuntime]) -> None:
    """A service's ``main``: logging, its CPU policy (first, so the threads started later inherit it), then
    :func:`serve` what ``build`` wires until SIGINT/SIGTERM."""
    setup_logging(settings.service_name, settings.log_level, settings.log_json, settings.log_file)
    apply_cpu_policy(settings.cpu_policy)
    asyncio.run(serve(build(settings)))


async def serve(runtime: ServiceRuntime) -> None:
    """Start the FastStream app, serve HTTP until SIGINT/SIGTERM, then stop gracefully."""
    http = build_http_app(runtime)
    config = uvicorn.Config(http, host=runtime.host, port=runtime.port, log_config=None, lifespan="off")
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: setattr(server, "should_exit", True))
    await runtime.app.start()
    log.info("%s started", runtime.name)
    try:
        await server.serve()
    finally:
        log.info("%s stopping", runtime.name)
        report = loop.call_later(STOP_REPORT_SECONDS, _report_slow_stop, runtime.name)
        try:
            await runtime.app.stop()
            for hook in runtime.on_stop:
                await hook()
        finally:
            report.cancel()
        log.info("%s stopped", runtime.name)


STOP_REPORT_SECONDS = 12.0
"""A stop still running after this long (FastStream's graceful timeout for in-flight handlers is 15 s) is
logged with every task's stack, so a hang names where it waits."""


def _report_slow_stop(name: str) -> None:
    log.warning("%s still stopping after %.0f s; its tasks:\n%s", name, STOP_REPORT_SECONDS, all_task_stacks())

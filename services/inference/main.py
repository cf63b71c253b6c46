"""Composition root of the inference service."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

from services.inference.candle_reader import CandleReader
from services.inference.handlers import InferenceMetrics, InferenceState, reconcile
from services.inference.loader import LoaderProcess
from services.inference.settings import InferenceSettings
from services.inference.subscribers import build_router
from services.inference.windows import CandleWindows
from services.inference.writer import PredictionWriter
from shared.bootstrap import Infrastructure
from shared.runtime import ServiceRuntime, run_service
from shared.settings import load_settings
from shared.streams import Group, Stream
from shared.tasks import cancel_and_wait, pause

log = logging.getLogger(__name__)

GIL_SWITCH_SECONDS = 0.00005
"""How long the event loop waits at most for the GIL while a worker thread (a version loading: file reads,
hashing, XGBoost's parser) holds it. Python's default, 5 ms, alone would break the 5 ms candle → prediction p99;
at 0.5 ms a version's load (many short GIL holds between file reads, hashing and XGBoost calls) still
cost each candle it overlapped up to 0.5 ms per hold. The interval matters only while threads contend."""


def build(settings: InferenceSettings) -> ServiceRuntime:
    """Wire inference (no I/O until started)."""
    infra = Infrastructure.build(settings, groups=[Group.INFERENCE])
    metrics = InferenceMetrics.create(infra.registry)
    state = InferenceState(
        settings=settings,
        sessions=infra.sessions,
        store=infra.store,
        publisher=infra.publisher,
        metrics=metrics,
        windows=CandleWindows(infra.sessions),
        loader=LoaderProcess(infra.store.root, niceness=settings.loader_niceness,
                             timeout=settings.loader_timeout_seconds, in_process=metrics.loads_in_process)
        if settings.load_in_child else None,
    )
    writer = PredictionWriter(state, infra.redis, infra.engine, stream=Stream.CANDLE_CLOSED.value,
                              group=Group.INFERENCE.value, max_pending=settings.pending_writes,
                              linger=settings.write_linger_ms / 1000)
    state.writer = writer
    reader = CandleReader(infra.redis, state, stream=Stream.CANDLE_CLOSED.value, group=Group.INFERENCE.value,
                          consumer=settings.consumer_name, batch=settings.candle_batch_size)
    infra.broker.include_router(build_router(state))
    app = infra.application("inference")
    tasks: list[asyncio.Task[None]] = []

    async def reconcile_forever() -> None:
        while True:
            await pause(settings.reconcile_seconds)
            try:
                await reconcile(state, challengers=True)
            except Exception:
                log.exception("periodic reconcile failed")

    async def start_serving() -> None:
        await reconcile(state, challengers=True)  # after the broadcast subscribers started: nothing slips between
        gc.collect()
        gc.freeze()  # start-up objects (libraries, first models) leave the collector: no ~100 ms full collections
        tasks.append(asyncio.create_task(reconcile_forever()))
        await reader.start()  # once the champions are loaded: no candle is skipped for want of a model

    async def stop_serving() -> None:
        await reader.stop()
        await cancel_and_wait(*tasks)

    app.on_startup(writer.start)
    if state.loader is not None:
        app.on_startup(state.loader.start)
    app.after_startup(start_serving)
    app.on_shutdown(stop_serving)
    on_stop = [writer.close] + ([state.loader.close] if state.loader is not None else [])
    return infra.runtime("inference", app, on_stop=on_stop)


def main() -> None:
    """Run inference until SIGINT/SIGTERM."""
    settings = load_settings(InferenceSettings)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    run_service(settings, build)

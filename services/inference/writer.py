"""The background writer: finishes candle batches off the hot path, in order, and only then acks them.

The candle handler publishes the champions' predictions and hands the batch here. The writer lets a few
batches gather (``linger``), runs the challengers (shadow), stores every row of those batches with one
statement, and XACKs their candles after the commit. A failed write acks nothing: the candles stay
pending and the reclaimer redoes them (publication and rows are idempotent per version and candle).

The writer keeps one database connection: on PostgreSQL in autocommit mode, so a flush is a single
round trip (one INSERT is atomic on its own) instead of ping + BEGIN + INSERT + COMMIT, and the rows
travel as one array per column (:class:`shared.db.bulk.UnnestInsert`): the writer shares the event
loop with the candle path, so its per-row client cost is paid in prediction latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.inference.predictions import PREDICTION_KEY, PendingWork, finish
from services.inference.state import InferenceState
from shared.broker import Redis
from shared.db.bulk import UnnestInsert
from shared.db.models import Prediction
from shared.db.session import dialect_insert
from shared.tasks import cancel_and_wait, raise_if_cancelling

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    work: PendingWork
    entry_ids: Sequence[bytes | str]


class PredictionWriter:
    """A bounded FIFO of predicted-but-unstored batches and the task that stores and acks them."""

    def __init__(self, state: InferenceState, redis: Redis, engine: AsyncEngine, *, stream: str, group: str,
                 max_pending: int = 64, linger: float = 0.02, max_merge: int = 64) -> None:
        self.state = state
        self.redis = redis
        self.engine = engine
        self.stream = stream
        self.group = group
        self.linger = linger
        self.max_merge = max_merge
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_pending)
        self._task: asyncio.Task[None] | None = None
        self._connection: AsyncConnection | None = None
        self._statement: Any = dialect_insert(engine, Prediction.__table__).on_conflict_do_nothing(
            index_elements=PREDICTION_KEY)
        self._bulk = UnnestInsert.of(Prediction.__table__, PREDICTION_KEY)  # type: ignore[arg-type]

    async def start(self) -> None:
        """Start the writer task (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="prediction-writer")

    async def submit(self, work: PendingWork, entry_ids: Sequence[bytes | str]) -> None:
        """Queue a batch; waits while ``max_pending`` batches are queued (back-pressure on reading)."""
        if self._task is None or self._task.done():
            raise RuntimeError("the prediction writer is not running")  # the batch stays pending
        await self._queue.put(_Job(work, entry_ids))

    async def drain(self) -> None:
        """Wait until every queued batch was stored (or failed)."""
        await self._queue.join()

    async def close(self, timeout: float = 10.0) -> None:
        """Store what is queued (up to ``timeout``), then stop; unstored batches stay pending."""
        if self._task is not None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout)
            except TimeoutError:
                log.warning("prediction writer closed with %d batches unstored (left pending)", self._queue.qsize())
            await cancel_and_wait(self._task)
            self._task = None
        await self._disconnect()

    async def _run(self) -> None:
        while True:
            raise_if_cancelling()  # a flush that swallowed stop()'s cancellation must not wait for the next job
            jobs = [await self._queue.get()]
            if self.linger > 0:
                await asyncio.sleep(self.linger)  # let a few more batches join this flush
            while len(jobs) < self.max_merge and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            try:
                await self._store(jobs)
            finally:
                for _ in jobs:
                    self._queue.task_done()

    async def _store(self, jobs: Sequence[_Job]) -> None:
        started = time.perf_counter()
        try:
            await finish([job.work for job in jobs], self.state, self._write_rows)
            entry_ids = [entry for job in jobs for entry in job.entry_ids]
            if entry_ids:
                await self.redis.xack(self.stream, self.group, *entry_ids)
        except Exception:
            self.state.metrics.write_failures.inc()
            log.exception("storing %d batches failed; their candles stay pending for the reclaimer", len(jobs))
            await self._disconnect()
            return
        self.state.metrics.write_seconds.observe(time.perf_counter() - started)

    async def _write_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        if self._connection is None:
            connection = await self.engine.connect()
            if connection.dialect.name == "postgresql":
                connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            self._connection = connection
        if self._connection.dialect.name == "postgresql":
            await self._bulk.execute(self._connection, rows)  # one atomic statement, autocommitted
        else:
            async with self._connection.begin():
                await self._connection.execute(self._statement, list(rows))

    async def _disconnect(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None

"""RetrainProgress events and log lines of one run, in order, from the event loop or a training thread."""

from __future__ import annotations

import asyncio
import logging
import math
from types import TracebackType
from typing import Any

from shared.messages import RetrainProgress, Slot
from shared.publishing import EventPublisher

log = logging.getLogger("services.trainer.progress")


def _plain(value: Any) -> Any:
    """JSON-safe detail values (non-finite floats become None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ProgressReporter:
    """``report(stage, detail)`` may be called from any thread; a pump task publishes in call order."""

    def __init__(self, publisher: EventPublisher, run_id: str, slot: Slot) -> None:
        self.publisher = publisher
        self.run_id = run_id
        self.slot = slot
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pump: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ProgressReporter:
        self._loop = asyncio.get_running_loop()
        self._pump = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.flush()
        self._queue.put_nowait(None)
        if self._pump is not None:
            await self._pump

    def report(self, stage: str, detail: dict[str, Any]) -> None:
        """Queue a progress event (thread-safe)."""
        item = (stage, {key: _plain(value) for key, value in detail.items()})
        if self._loop is None:
            raise RuntimeError("ProgressReporter used outside its context")
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def stage(self, stage: str, **detail: Any) -> None:
        """Queue a progress event from the event loop and wait until it is published."""
        self.report(stage, detail)
        await self.flush()

    async def flush(self) -> None:
        """Wait until every queued event is published."""
        await asyncio.sleep(0)  # let call_soon_threadsafe callbacks enqueue
        await self._queue.join()

    async def _run(self) -> None:
        while (item := await self._queue.get()) is not None:
            stage, detail = item
            try:
                log.info("retrain %s: %s", stage, detail, extra={"run_id": self.run_id, "slot": self.slot.key,
                                                                  "stage": stage})
                await self.publisher.publish(
                    RetrainProgress(run_id=self.run_id, slot=self.slot, stage=stage, detail=detail)
                )
            except Exception as error:  # progress is best effort; the run goes on
                log.warning("progress event %s not published: %r", stage, error)
            finally:
                self._queue.task_done()
        self._queue.task_done()

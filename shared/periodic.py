"""Run a renewal every few seconds while a body of work runs (leases, claims), stopping with the body."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from shared.tasks import cancel_and_wait, pause

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def every(seconds: float, renew: Callable[[], Awaitable[object]], *, what: str) -> AsyncIterator[None]:
    """Await ``renew()`` every ``seconds`` while the ``async with`` body runs; a failing renewal is logged
    (``what`` names it) and retried at the next beat. The task is cancelled when the body ends."""

    async def beat() -> None:
        while True:
            await pause(seconds)  # a renewal that swallowed the body's end must not renew on for ever
            try:
                await renew()
            except Exception as error:
                log.warning("%s failed: %r", what, error)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        await cancel_and_wait(task)

"""Stopping background tasks without losing the caller's own cancellation.

The common ``task.cancel(); with suppress(CancelledError): await task`` swallows a cancellation of
the *caller* that lands while it awaits the task: the caller then runs on as if nothing happened
(a service's loop that ignores its shutdown and keeps the process alive until it is killed).
:func:`cancel_and_wait` re-raises the caller's cancellation and bounds the wait, logging the stack
of a task that will not stop.
"""

from __future__ import annotations

import asyncio
import io
import logging

log = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 10.0


async def cancel_and_wait(*tasks: asyncio.Task[object] | None, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """Cancel ``tasks`` and wait until they ended (their exceptions are logged, not raised).

    A task still running after ``timeout`` seconds is logged with its stack and left behind. If the
    calling task is itself cancelled meanwhile, that cancellation propagates (after the tasks were
    cancelled), never swallowed.
    """
    running = [task for task in tasks if task is not None and not task.done()]
    for task in running:
        task.cancel()
    if running:
        _, stuck = await asyncio.wait(running, timeout=timeout)
        for task in stuck:
            log.error("task %s did not stop %.0f s after its cancellation:\n%s", task.get_name(), timeout,
                      task_stack(task))
    for ended in tasks:
        if ended is not None and ended.done() and not ended.cancelled() and ended.exception() is not None:
            log.error("task %s ended with %r", ended.get_name(), ended.exception())


def task_stack(task: asyncio.Task[object]) -> str:
    """The stack of ``task`` (where it awaits), as text."""
    buffer = io.StringIO()
    task.print_stack(file=buffer)
    return buffer.getvalue()


def all_task_stacks() -> str:
    """The stacks of every task of the running loop (for a stop that hangs)."""
    return "\n".join(f"--- {task.get_name()}\n{task_stack(task)}" for task in asyncio.all_tasks())

"""Stopping background tasks without losing the caller's own cancellation, and work a cancellation must not cut.

The common ``task.cancel(); with suppress(CancelledError): await task`` swallows a cancellation of
the *caller* that lands while it awaits the task: the caller then runs on as if nothing happened
(a service's loop that ignores its shutdown and keeps the process alive until it is killed).
:func:`cancel_and_wait` re-raises the caller's cancellation and bounds the wait, logging the stack
of a task that will not stop. :func:`finish_before_cancel` is the other direction: a unit of work (a
database transaction) that the caller's cancellation waits for instead of interrupting.

Python 3.11's :func:`asyncio.wait_for` drops a cancellation that lands in the step its awaitable completes
(it returns the result; fixed in 3.12, CPython gh-86296). redis-py sends every command of a client with a
``socket_timeout`` (redis-py 8: 5 s by default) through ``wait_for``, so a task cancelled while a command
finishes runs on with its cancellation requested but never raised. A loop that then sleeps or waits would
never stop (a scheduler firing every tick, a lease renewed after its run ended). Long-running loops call
:func:`raise_if_cancelling` (or sleep through :func:`pause`) after their awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

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


async def finish_before_cancel(work: Coroutine[Any, Any, T], *, timeout: float = STOP_TIMEOUT_SECONDS) -> T:
    """Await ``work`` so that a cancellation of the caller cannot cut it short: a database unit of work then
    commits or rolls back, never leaving its connection mid-transaction (asyncpg and SQLAlchemy can hand such a
    connection back to the pool with the transaction, and its locks, still open). The caller's cancellation
    is re-raised once ``work`` has ended, or after ``timeout`` seconds (then ``work`` is cancelled after all
    and the stack it hung in is logged).
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not task.done() and (left := deadline - loop.time()) > 0:
            with contextlib.suppress(asyncio.CancelledError):  # re-raised below: the caller still stops
                await asyncio.wait([task], timeout=left)
        if not task.done():
            log.error("%s did not finish %.0f s after a cancellation; cancelling it:\n%s", task.get_name(), timeout,
                      task_stack(task))
            task.cancel()
        elif not task.cancelled() and task.exception() is not None:
            log.error("%s failed while its caller was being cancelled: %r", task.get_name(), task.exception())
        raise


def raise_if_cancelling() -> None:
    """Raise :class:`asyncio.CancelledError` when this task's cancellation was requested and not raised
    (swallowed by Python 3.11's ``wait_for``, see the module docstring); a no-op outside a task."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError(f"{task.get_name()} was cancelled (the cancellation was swallowed on the way)")


async def pause(seconds: float) -> None:
    """A long-running loop's sleep: first stop if a cancellation was swallowed, then ``asyncio.sleep``."""
    raise_if_cancelling()
    await asyncio.sleep(seconds)


BACKGROUND_YIELD_SECONDS = 0.0002


async def yield_to_io(seconds: float = BACKGROUND_YIELD_SECONDS) -> None:
    """Let work that became ready on a socket run before the caller's next step (background work between steps).

    ``asyncio.sleep(0)`` re-queues the caller at once: a task woken by a socket that became readable
    meanwhile is scheduled behind it and waits one more step, sometimes two. A short timer instead lets
    the loop run the socket's callbacks and the task they wake first; with nothing waiting, the caller
    loses ``seconds``.
    """
    await asyncio.sleep(seconds)

"""shared.tasks.cancel_and_wait: stops tasks, never swallows the caller's own cancellation, bounds the wait."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from shared.periodic import every
from shared.tasks import cancel_and_wait, finish_before_cancel, pause, raise_if_cancelling, yield_to_io

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def sleeper() -> None:
    await asyncio.sleep(3600)


async def cancelled_while_stopping(stop: Callable[[asyncio.Task[None]], contextlib.AbstractAsyncContextManager[None]]) -> bool:
    """Run a task whose cleanup (``stop``'s exit) is where its own cancellation lands; return whether the
    task ended cancelled (False: the cancellation was swallowed and it ran on)."""
    ran_on = asyncio.Event()

    async def worker() -> None:
        me = asyncio.current_task()
        assert me is not None
        async with stop(me):
            asyncio.get_running_loop().call_soon(me.cancel)  # lands while the exit awaits the helper task
        ran_on.set()
        await asyncio.sleep(0.2)

    task = asyncio.create_task(worker())
    done, _ = await asyncio.wait([task], timeout=2.0)
    assert done
    return task.cancelled() and not ran_on.is_set()


@contextlib.asynccontextmanager
async def helper_task(_: asyncio.Task[None]) -> AsyncIterator[None]:
    helper = asyncio.create_task(sleeper())
    try:
        yield
    finally:
        await cancel_and_wait(helper)


@contextlib.asynccontextmanager
async def suppressing_helper_task(_: asyncio.Task[None]) -> AsyncIterator[None]:
    helper = asyncio.create_task(sleeper())
    try:
        yield
    finally:
        helper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await helper


@contextlib.asynccontextmanager
async def beating(_: asyncio.Task[None]) -> AsyncIterator[None]:
    async def renew() -> None:
        pass

    async with every(3600, renew, what="beat"):
        yield


async def test_the_callers_cancellation_while_it_stops_a_task_propagates() -> None:
    assert await cancelled_while_stopping(helper_task)
    assert await cancelled_while_stopping(beating)  # every() stops its beat the same way


async def test_the_old_suppress_pattern_swallows_it() -> None:
    """What this module exists for: the construction the probe above must be able to catch."""
    assert not await cancelled_while_stopping(suppressing_helper_task)


async def test_a_task_that_will_not_stop_is_reported_with_its_stack(caplog: pytest.LogCaptureFixture) -> None:
    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)  # ignores the first cancellation
        await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR):
        await cancel_and_wait(task, timeout=0.05)
    assert "task stubborn did not stop 0 s after its cancellation" in caplog.text
    assert "in stubborn" in caplog.text  # the stack says where it hangs
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_failed_tasks_are_logged_and_finished_ones_ignored(caplog: pytest.LogCaptureFixture) -> None:
    async def boom() -> None:
        raise RuntimeError("boom")

    failed, finished = asyncio.create_task(boom(), name="boom"), asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    await cancel_and_wait(failed, finished, None)
    assert "task boom ended with RuntimeError('boom')" in caplog.text


async def test_work_finishes_before_the_callers_cancellation_propagates() -> None:
    steps: list[str] = []

    async def transaction() -> str:
        steps.append("begin")
        await asyncio.sleep(0.05)
        steps.append("commit")
        return "done"

    caller = asyncio.create_task(finish_before_cancel(transaction()))
    await asyncio.sleep(0.01)
    caller.cancel()
    await asyncio.sleep(0.01)
    caller.cancel()  # a second cancellation does not cut it either
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert steps == ["begin", "commit"]  # ended before the caller stopped
    assert await finish_before_cancel(transaction()) == "done"


async def test_work_that_hangs_is_cancelled_after_the_timeout_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def hangs() -> None:
        await asyncio.sleep(3600)

    caller = asyncio.create_task(finish_before_cancel(hangs(), timeout=0.05))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert "did not finish 0 s after a cancellation; cancelling it" in caplog.text
    assert "in hangs" in caplog.text


async def test_errors_pass_through_when_nothing_is_cancelled() -> None:
    async def fails() -> None:
        raise ValueError("constraint")

    with pytest.raises(ValueError, match="constraint"):
        await finish_before_cancel(fails())


async def _socket_woken_order(pause: Callable[[], Any]) -> list[str]:
    """Background steps of which the first makes a socket readable: where does its reader's task run?"""
    left, right = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=left)
    order: list[str] = []

    async def read() -> None:
        await reader.read(1)
        order.append("reader")

    try:
        waiting = asyncio.create_task(read())
        await asyncio.sleep(0.01)  # the reader waits on its socket
        for step in range(4):
            if step == 0:
                right.send(b"x")
            order.append(f"step {step}")
            await pause()
        await asyncio.wait_for(waiting, 5)
    finally:
        writer.close()
        right.close()
    return order


async def test_yield_to_io_lets_a_task_woken_by_a_socket_go_before_the_next_step() -> None:
    """With sleep(0) the task that data woke runs only after more background steps; with yield_to_io it
    runs before the next one."""
    assert (await _socket_woken_order(yield_to_io)).index("reader") == 1
    assert (await _socket_woken_order(lambda: asyncio.sleep(0))).index("reader") > 1


async def test_pause_stops_a_loop_whose_cancellation_a_completing_call_swallowed(completing_call: Any) -> None:
    steps: list[str] = []

    async def loop() -> None:
        while True:
            await completing_call()
            steps.append("call returned")
            await pause(3600)

    task = asyncio.create_task(loop())
    await completing_call.started.wait()
    completing_call.complete()
    task.cancel()  # the same step: on Python 3.11 the call returns instead of raising
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2.0)
    assert task.cancelled() and completing_call.calls == 1
    raise_if_cancelling()  # a task that was not cancelled goes on

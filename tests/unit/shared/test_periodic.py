"""shared.periodic.every: renews while the body runs, survives a failing renewal, stops with the body."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.periodic import every

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_renews_while_running_survives_failures_and_stops_after(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    async def renew() -> None:
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("redis away")

    async with every(0.01, renew, what="test renewal"):
        await asyncio.sleep(0.08)
    seen = len(calls)
    assert seen >= 3  # the failing second beat did not stop the third
    assert "test renewal failed: RuntimeError('redis away')" in caplog.text
    await asyncio.sleep(0.05)
    assert len(calls) == seen  # nothing after the body ended


async def test_the_body_s_error_propagates_and_the_beat_stops() -> None:
    calls: list[None] = []

    async def renew() -> None:
        calls.append(None)

    with pytest.raises(ValueError, match="body"):
        async with every(0.01, renew, what="x"):
            raise ValueError("body")
    await asyncio.sleep(0.03)
    assert calls == []


async def test_a_renewal_that_swallows_the_cancellation_still_stops_with_the_body(
    completing_call: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The body ends (its cancel_and_wait cancels the beat) in the step the renewal's Redis call completes:
    Python 3.11's wait_for drops that cancellation, and the beat must stop anyway, not renew for ever."""
    async with every(0.001, completing_call, what="lease renewal"):
        await completing_call.started.wait()
        completing_call.complete()  # no await between this and the beat's cancellation
    calls = completing_call.calls
    await asyncio.sleep(0.05)
    assert completing_call.calls == calls  # no renewal after the body ended
    assert "did not stop" not in caplog.text

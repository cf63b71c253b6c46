"""shared.priority.lower_thread_priority and the registry's Verifier: the check's thread yields the CPU, the rest
of the process keeps its priority."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from services.registry.verification import Verifier
from shared.priority import lower_thread_priority

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def _own_niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@linux_only
def test_only_the_calling_thread_is_lowered() -> None:
    before = _own_niceness()
    seen: dict[str, object] = {}

    def worker() -> None:
        seen["lowered"] = lower_thread_priority(3)
        seen["niceness"] = _own_niceness()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"lowered": True, "niceness": min(19, before + 3)}
    assert _own_niceness() == before  # this thread (and so the event loop's) is untouched
    assert lower_thread_priority(0) is False


@linux_only
@pytest.mark.asyncio(loop_scope="session")
async def test_the_verifier_checks_in_one_lowered_thread_and_returns_the_answer() -> None:
    before = _own_niceness()
    verifier = Verifier(niceness=4)
    try:
        first = await verifier.run(lambda: (threading.get_native_id(), _own_niceness()))
        second = await verifier.run(lambda: (threading.get_native_id(), _own_niceness()))
        assert first == second and first[1] == min(19, before + 4)  # one thread, lowered once
        with pytest.raises(ValueError, match="refused"):
            await verifier.run(_refuse)
    finally:
        verifier.close()
    assert _own_niceness() == before


def _refuse() -> None:
    raise ValueError("refused")

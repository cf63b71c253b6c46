"""shared.priority: lower_thread_priority and the registry's Verifier (the check's thread yields the CPU, the rest
of the process keeps its priority), and apply_cpu_policy (SCHED_BATCH for the thread and the threads it starts)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from services.registry.settings import RegistrySettings
from services.registry.verification import Verifier
from services.trainer.settings import TrainerSettings
from shared.priority import apply_cpu_policy, lower_thread_priority
from shared.settings import ServiceSettings

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
        await verifier.close()
    assert _own_niceness() == before


def _refuse() -> None:
    raise ValueError("refused")


@linux_only
def test_the_batch_policy_covers_the_calling_thread_and_the_threads_it_starts_only() -> None:
    seen: dict[str, object] = {}

    def child() -> None:
        seen["child"] = os.sched_getscheduler(0)

    def worker() -> None:
        seen["normal"] = apply_cpu_policy("normal")
        seen["applied"] = apply_cpu_policy("batch")
        seen["own"] = os.sched_getscheduler(0)
        started = threading.Thread(target=child)
        started.start()
        started.join()

    main_policy = os.sched_getscheduler(0)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"normal": False, "applied": True, "own": os.SCHED_BATCH, "child": os.SCHED_BATCH}
    assert os.sched_getscheduler(0) == main_policy == os.SCHED_OTHER  # this thread is untouched


def test_throughput_services_default_to_the_batch_policy_and_it_can_be_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = "a-registry-token-of-enough-length-1"
    assert RegistrySettings(admin_token=token).cpu_policy == "batch"
    assert TrainerSettings().cpu_policy == "batch"
    assert ServiceSettings().cpu_policy == "normal"  # inference and ingest keep the OS default
    monkeypatch.setenv("TRADELOOP_CPU_POLICY", "normal")
    assert TrainerSettings().cpu_policy == "normal"
    monkeypatch.setenv("TRADELOOP_CPU_POLICY", "realtime")
    with pytest.raises(ValueError, match="'normal' or 'batch'"):
        TrainerSettings()

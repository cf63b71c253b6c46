"""Lower the CPU priority of background work that shares a machine with the candle path.

On Linux a thread has a nice value of its own (``setpriority`` with a thread id names that one thread),
so work such as a registry's artifact verification can yield the CPU to inference at once while the
rest of its process keeps its priority. Elsewhere the call does nothing (a thread id there may name
an unrelated process).

A whole service can run under a CPU policy (:data:`CpuPolicy`, ``TRADELOOP_CPU_POLICY``): ``batch`` is
Linux's SCHED_BATCH, for throughput work (the registry, the trainer): such a process still gets its share
of the CPU, but waking up it does not preempt a running process, so its many short wake-ups (a query
answered, a command read) do not cut into a candle being predicted. Threads inherit the policy of the
thread that starts them: :func:`apply_cpu_policy` runs first in a service's ``main``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Literal

log = logging.getLogger(__name__)

MAX_NICENESS = 19

CpuPolicy = Literal["normal", "batch"]
"""``normal``: the OS default; ``batch``: SCHED_BATCH (Linux), no preemption on wake-up."""


def apply_cpu_policy(policy: CpuPolicy) -> bool:
    """Put the calling thread (and the threads it starts from now on) under ``policy``; False where nothing
    changed (``normal``, not Linux, or refused)."""
    if policy == "normal" or not sys.platform.startswith("linux"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as error:
        log.warning("could not apply the CPU policy %s: %r", policy, error)
        return False
    return True


def lower_thread_priority(niceness: int) -> bool:
    """Raise the calling OS thread's nice value by ``niceness`` (capped at 19); False where it cannot."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return False
    thread = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(MAX_NICENESS, current + niceness))
    except OSError as error:
        log.warning("could not lower the priority of thread %s: %r", thread, error)
        return False
    return True

"""Lower the CPU priority of background work that shares a machine with the candle path.

On Linux a thread has a nice value of its own (``setpriority`` with a thread id names that one thread),
so work such as a registry's artifact verification can yield the CPU to inference at once while the
rest of its process keeps its priority. Elsewhere the call does nothing (a thread id there may name
an unrelated process).
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

MAX_NICENESS = 19


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

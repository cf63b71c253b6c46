"""Loading a version to check it before it may become champion, in a thread of its own at a lower CPU priority.

The check is the whole serving load (sha256 of every file, XGBoost's parser, the compiled forest against the
booster), run in the step where inference is about to load the same version. On a 2-vCPU host
(``bench/hot_swap.py``) with the check at the service's priority, candles arriving 0-30 ms after an
ActivateModel command were over the steady p99 14-24 % of the time against ~1 % from 100 ms on, and the
swaps-phase p99 missed 1.5 x steady in 3 of 12 runs; with the check at nice +10 the registry's CPU yields to
the candle path (those buckets 0-16 %, ratios 0.98-1.28 in 3 of 3 runs) and its answer comes as fast.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from shared.priority import lower_thread_priority

T = TypeVar("T")


class Verifier:
    """Runs checks one at a time in one worker thread whose nice value is raised by ``niceness``."""

    def __init__(self, niceness: int) -> None:
        self.niceness = niceness
        self._pool: ThreadPoolExecutor | None = None

    async def run(self, check: Callable[..., T], *args: object) -> T:
        """``check(*args)`` in the verification thread (started on first use)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify",
                                            initializer=lower_thread_priority, initargs=(self.niceness,))
        return await asyncio.get_running_loop().run_in_executor(self._pool, check, *args)

    async def close(self) -> None:
        """Stop the thread once its current check ends; queued checks are dropped (the service's stop hook)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

"""Stream health as Prometheus gauges, refreshed every few seconds by a background task.

For every work stream a service consumes (``shared.streams.WORK_GROUPS``) and its groups:

* ``tradeloop_stream_length{stream}``: XLEN of the stream and of its dead-letter stream
  ``<stream>.dlq`` (0 while that does not exist, so a first dead letter is a visible change);
* ``tradeloop_stream_group_pending{stream,group}``: entries delivered to the group, not yet acked;
* ``tradeloop_stream_group_lag{stream,group}``: entries not yet delivered to the group (XINFO
  GROUPS ``lag``; NaN when Redis cannot tell, e.g. after XDEL inside the undelivered range);
* ``tradeloop_stream_oldest_pending_seconds{stream,group}``: age of the oldest pending entry, from
  its id's timestamp against the Redis clock (XPENDING summary ``min``); 0 when nothing is pending.
  It keeps growing while a message is stuck, also when a lease (XCLAIM) keeps its idle time low.

Every replica of a service reports the same numbers; dashboards and alerts take ``max by``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from redis.exceptions import ResponseError

from shared.broker import Redis
from shared.streams import WORK_GROUPS, Group, dead_letter_stream
from shared.tasks import cancel_and_wait, pause

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS = 5.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_milliseconds(entry_id: Any) -> int:
    return int(_text(entry_id).split("-", 1)[0])


def watched_streams(groups: Iterable[Group | str]) -> dict[str, tuple[str, ...]]:
    """Work streams read by ``groups`` → the groups (of those) that read each."""
    wanted = {Group(group).value for group in groups}
    watched: dict[str, tuple[str, ...]] = {}
    for stream, readers in WORK_GROUPS.items():
        mine = tuple(group.value for group in readers if group.value in wanted)
        if mine:
            watched[stream.value] = mine
    return watched


class StreamHealth:
    """The gauges (registered at construction) and the task that refreshes them."""

    def __init__(
        self,
        redis: Redis,
        registry: CollectorRegistry | None,
        groups: Iterable[Group | str],
        interval: float = DEFAULT_INTERVAL_SECONDS,
    ) -> None:
        self.redis = redis
        self.interval = interval
        self.streams = watched_streams(groups)
        self.length = Gauge(
            "tradeloop_stream_length", "Entries in a stream (XLEN); dead-letter streams end in .dlq.", ["stream"],
            registry=registry,
        )
        self.pending = Gauge(
            "tradeloop_stream_group_pending", "Entries delivered to the consumer group and not acknowledged.",
            ["stream", "group"], registry=registry,
        )
        self.lag = Gauge(
            "tradeloop_stream_group_lag", "Entries not yet delivered to the consumer group (XINFO GROUPS lag).",
            ["stream", "group"], registry=registry,
        )
        self.oldest_pending = Gauge(
            "tradeloop_stream_oldest_pending_seconds",
            "Age of the group's oldest pending (delivered, unacknowledged) entry; 0 when none.",
            ["stream", "group"], registry=registry,
        )
        self._group_labels: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def refresh(self) -> None:
        """Read every watched stream and group once and set the gauges."""
        seconds, micros = await self.redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        seen: set[tuple[str, str]] = set()
        for stream, groups in self.streams.items():
            self.length.labels(stream).set(await self.redis.xlen(stream))
            dlq = dead_letter_stream(stream)
            self.length.labels(dlq).set(await self.redis.xlen(dlq))
            try:
                infos = await self.redis.xinfo_groups(stream)
            except ResponseError:  # the stream does not exist (yet): no group to report
                continue
            by_name = {_text(info["name"]): info for info in infos}
            for group in groups:
                info = by_name.get(group)
                if info is None:
                    continue
                pending = int(info["pending"])
                lag = info.get("lag")
                self.pending.labels(stream, group).set(pending)
                self.lag.labels(stream, group).set(math.nan if lag is None else int(lag))
                age = 0.0
                if pending:
                    summary = await self.redis.xpending(stream, group)
                    if summary.get("min"):
                        age = max(0.0, (now_ms - _id_milliseconds(summary["min"])) / 1000)
                self.oldest_pending.labels(stream, group).set(age)
                seen.add((stream, group))
        for stream, group in self._group_labels - seen:  # a group that disappeared: drop its series
            for gauge in (self.pending, self.lag, self.oldest_pending):
                with contextlib.suppress(KeyError):
                    gauge.remove(stream, group)
        self._group_labels = seen

    async def run(self) -> None:
        """Refresh forever; a failed refresh is logged (once per streak) and retried next interval."""
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not self._failing:
                    log.warning("stream health refresh failed (retrying every %.1f s): %r", self.interval, error)
                self._failing = True
            else:
                if self._failing:
                    log.info("stream health refresh works again")
                self._failing = False
            await pause(self.interval)

    async def start(self) -> None:
        """Start the refresh task (a FastStream ``after_startup`` hook)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="stream-health")

    async def stop(self) -> None:
        """Cancel the refresh task and wait for it (an ``on_shutdown`` hook)."""
        task, self._task = self._task, None
        if task is not None:
            await stop_stream_health(task)


def start_stream_health(
    redis: Redis,
    registry: CollectorRegistry | None,
    groups: Iterable[Group | str],
    interval: float = DEFAULT_INTERVAL_SECONDS,
) -> asyncio.Task[None]:
    """Register the gauges on ``registry`` and start refreshing them; stop with :func:`stop_stream_health`.

    Registers the gauges, so call it once per registry; :class:`StreamHealth` separates both steps.
    """
    return asyncio.create_task(StreamHealth(redis, registry, groups, interval).run(), name="stream-health")


async def stop_stream_health(task: asyncio.Task[None]) -> None:
    """Cancel a stream health task and wait until it ended."""
    await cancel_and_wait(task)

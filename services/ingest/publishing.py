"""Publish many CandleClosed events once each, in a few Lua calls instead of one per event.

Same contract and keys as :meth:`shared.publishing.EventPublisher.publish_once`
(``tradeloop:once:{key}`` SET NX with the same TTL, then XADD of the plain-JSON envelope), so
both can dedupe the same keys; this one sends a whole page per script call, which a backfill of
24 000 candles a second needs.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.commands.core import AsyncScript

from shared.publishing import ONCE_TTL_SECONDS, EventPublisher
from shared.streams import Stream

BATCH = 500
"""Events per script call (keeps each call to a few ms of Redis time)."""

_BATCH_ONCE = """
local published = 0
for i = 2, #KEYS do
  local base = 2 + (i - 2) * 2
  if redis.call('SET', KEYS[i], ARGV[base + 1], 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', '__data__', ARGV[base + 2])
    published = published + 1
  end
end
return published
"""


class CandlePublisher:
    """Publishes CandleClosed events once per dedupe key, a page at a time."""

    def __init__(self, publisher: EventPublisher) -> None:
        self.publisher = publisher
        self._script: AsyncScript = publisher.redis.register_script(_BATCH_ONCE)

    async def publish_once(self, events: Sequence[tuple[str, str, str]]) -> int:
        """Publish each (dedupe key, event id, CandleClosed JSON) unless its key was published before.

        Return how many were new.
        """
        stream = Stream.CANDLE_CLOSED.value
        new = 0
        for start in range(0, len(events), BATCH):
            chunk = events[start : start + BATCH]
            keys = [stream, *(f"tradeloop:once:{key}" for key, _, _ in chunk)]
            args: list[str | int] = [ONCE_TTL_SECONDS, self.publisher.maxlen]
            for _key, event_id, payload in chunk:
                args += [event_id, payload]
            new += int(await self._script(keys=keys, args=args))
        if new:
            self.publisher.published.labels(stream).inc(new)
        if len(events) - new:
            self.publisher.duplicates.labels(stream).inc(len(events) - new)
        return new

"""Publishing events and commands as plain-JSON stream entries (``__data__``), with metrics.

Plain JSON is what any client can XADD and read with redis-cli; FastStream consumers parse it.
``publish_once`` makes a publication idempotent across restarts and replicas: a Redis key
``SET NX`` and the XADD run in one Lua script, so exactly one entry is written per key.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter
from redis.commands.core import AsyncScript

from shared.broker import Redis
from shared.messages import Message, stream_of
from shared.streams import DEFAULT_MAXLEN

_ONCE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', '__data__', ARGV[4])
end
return false
"""

ONCE_TTL_SECONDS = 30 * 86400


class EventPublisher:
    """Publish messages on their declared streams."""

    def __init__(self, redis: Redis, registry: CollectorRegistry | None = None, maxlen: int = DEFAULT_MAXLEN):
        self.redis = redis
        self.maxlen = maxlen
        self._once: AsyncScript = redis.register_script(_ONCE)
        self.published = Counter(
            "tradeloop_messages_published",
            "Messages published by tradeloop, by stream.",
            ["stream"],
            registry=registry,
        )
        self.duplicates = Counter(
            "tradeloop_publish_duplicates_skipped",
            "Publications skipped because the same key was already published, by stream.",
            ["stream"],
            registry=registry,
        )

    async def publish(self, message: Message) -> str:
        """XADD ``message`` on its stream; return the entry id."""
        stream = stream_of(message).value
        entry = await self.redis.xadd(
            stream, {"__data__": message.model_dump_json()}, maxlen=self.maxlen, approximate=True
        )
        self.published.labels(stream).inc()
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    async def publish_once(self, messages: Sequence[tuple[str, Message]]) -> int:
        """Publish each (dedupe key, message) unless its key was published before; return how many were new."""
        if not messages:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, message in messages:
                stream = stream_of(message).value
                await self._once(
                    keys=[f"tradeloop:once:{key}", stream],
                    args=[str(message.event_id), ONCE_TTL_SECONDS, self.maxlen, message.model_dump_json()],
                    client=pipe,
                )
            results = await pipe.execute()
        new = 0
        for (_key, message), result in zip(messages, results, strict=True):
            stream = stream_of(message).value
            if result:
                new += 1
                self.published.labels(stream).inc()
            else:
                self.duplicates.labels(stream).inc()
        return new

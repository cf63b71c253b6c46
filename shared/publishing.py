"""Publishing events and commands as plain-JSON stream entries (``__data__``), with metrics.

Plain JSON is what any client can XADD and read with redis-cli; FastStream consumers parse it.
``publish_once`` makes a publication idempotent across restarts and replicas: for each message a
Redis key ``tradeloop:once:{key}`` is ``SET NX`` (value: the event id, TTL :data:`ONCE_TTL_SECONDS`)
and only if it was new is the entry XADDed, both in one Lua script, so exactly one entry is written
per key. A whole batch (up to :data:`ONCE_BATCH` messages, any mix of streams) is one ``EVALSHA``:
one round trip, no ``SCRIPT EXISTS`` (redis-py's pipelines send one before every execute), the
script is loaded only when Redis answers NOSCRIPT. :meth:`EventPublisher.publish_once_raw` takes
already serialised entries (what a backfill publishing pages of candles needs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from shared.broker import Redis
from shared.direct_redis import DirectConnection
from shared.messages import Message, stream_of
from shared.streams import DEFAULT_MAXLEN

_ONCE = """
local call, find, sub = redis.call, string.find, string.sub
local ttl, maxlen, m = ARGV[1], ARGV[2], tonumber(ARGV[3])
local which, ids, payloads = ARGV[4], ARGV[5], ARGV[6]
local n = #KEYS - m
local id_at, payload_at, which_at = 1, 1, 1
local flags = {}
for i = 1, n do
  local id_end = find(ids, '\\n', id_at, true) or (#ids + 1)
  local payload_end = find(payloads, '\\n', payload_at, true) or (#payloads + 1)
  local stream = KEYS[n + 1]
  if m > 1 then
    local which_end = find(which, '\\n', which_at, true) or (#which + 1)
    stream = KEYS[n + tonumber(sub(which, which_at, which_end - 1))]
    which_at = which_end + 1
  end
  if call('SET', KEYS[i], sub(ids, id_at, id_end - 1), 'NX', 'EX', ttl) then
    call('XADD', stream, 'MAXLEN', '~', maxlen, '*', '__data__', sub(payloads, payload_at, payload_end - 1))
    flags[i] = '1'
  else
    flags[i] = '0'
  end
  id_at, payload_at = id_end + 1, payload_end + 1
end
return table.concat(flags)
"""
"""KEYS: the n once-keys, then the m distinct streams. ARGV: ttl, maxlen, m, then three newline-joined
lists: each entry's stream (1-based index among the streams; empty when m is 1), event ids, payloads.
The ids and payloads travel as two arguments rather than two per entry: packing thousands of small
arguments costs the client more than the whole script costs Redis (a backfill page is 1440 entries).
Returns one character per entry: 1 published, 0 duplicate."""

ONCE_PREFIX = "tradeloop:once:"
ONCE_TTL_SECONDS = 30 * 86400
ONCE_BATCH = 500
"""Entries per script call: keeps one call to a few ms of Redis time."""


class OnceEntry(NamedTuple):
    """One serialised publication for :meth:`EventPublisher.publish_once_raw`."""

    key: str
    """The dedupe key (stored as ``tradeloop:once:{key}``)."""
    stream: str
    event_id: str
    """Stored under the key: which event won."""
    payload: str
    """The ``__data__`` field: the message as JSON (one line)."""


def once_key(key: str) -> str:
    """The Redis key that marks ``key`` as published."""
    return ONCE_PREFIX + key


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

    async def publish_once(self, messages: Sequence[tuple[str, Message]], *,
                           via: DirectConnection | None = None) -> int:
        """Publish each (dedupe key, message) unless its key was published before; return how many were new.

        ``via``: send on that connection instead of the client's pool (a hot path's own connection).
        """
        if not messages:
            return 0
        flags = await self.publish_once_raw([
            OnceEntry(key, stream_of(message).value, str(message.event_id), message.model_dump_json())
            for key, message in messages
        ], via=via)
        return sum(flags)

    async def publish_once_raw(self, entries: Sequence[OnceEntry], *,
                               via: DirectConnection | None = None) -> list[bool]:
        """Publish serialised entries once per key, one script call per :data:`ONCE_BATCH` entries.

        Return, per entry, whether it was published (False: its key was published before, possibly by
        an earlier entry of the same call). Each entry's check and XADD are atomic; entries are written
        in order. ``via`` as in :meth:`publish_once`.
        """
        flags: list[bool] = []
        for start in range(0, len(entries), ONCE_BATCH):
            chunk = entries[start : start + ONCE_BATCH]
            streams: dict[str, int] = {}
            which = [str(streams.setdefault(entry.stream, len(streams) + 1)) for entry in chunk]
            flags += await self._call([entry.key for entry in chunk], list(streams), which,
                                      [entry.event_id for entry in chunk], [entry.payload for entry in chunk], via)
        self._count([entry.stream for entry in entries], flags)
        return flags

    async def publish_stream_once(self, stream: str, events: Sequence[tuple[str, str, str]]) -> int:
        """Publish (dedupe key, event id, JSON payload) entries of one stream once per key; return how many were
        new. The same contract as :meth:`publish_once_raw`, for a backfill page of one stream."""
        flags: list[bool] = []
        for start in range(0, len(events), ONCE_BATCH):
            chunk = events[start : start + ONCE_BATCH]
            flags += await self._call([key for key, _, _ in chunk], [stream], [],
                                      [event_id for _, event_id, _ in chunk], [payload for _, _, payload in chunk])
        new = sum(flags)
        self._tally(stream, new, len(events) - new)
        return new

    async def _call(self, keys: Sequence[str], streams: Sequence[str], which: Sequence[str],
                    event_ids: Sequence[str], payloads: Sequence[str],
                    via: DirectConnection | None = None) -> list[bool]:
        ids, data = "\n".join(event_ids), "\n".join(payloads)
        if ids.count("\n") != len(keys) - 1 or data.count("\n") != len(keys) - 1:
            raise ValueError("an event id or payload contains a newline")  # JSON from pydantic never does
        args: list[str | int] = [ONCE_TTL_SECONDS, self.maxlen, len(streams),
                                 "\n".join(which) if len(streams) > 1 else "", ids, data]
        script_keys = [ONCE_PREFIX + key for key in keys] + list(streams)
        if via is None:
            reply = await self._once(keys=script_keys, args=args)
        else:
            reply = await self._evalsha(via, script_keys, args)
        text = reply.decode() if isinstance(reply, bytes) else str(reply)
        return [flag == "1" for flag in text]

    async def _evalsha(self, via: DirectConnection, keys: Sequence[str], args: Sequence[str | int]) -> object:
        """The once-script on ``via``: EVALSHA, loading the script first when Redis does not know it (as
        redis-py's Script does after a restart or SCRIPT FLUSH)."""
        try:
            return await via.execute("EVALSHA", self._once.sha, len(keys), *keys, *args)
        except NoScriptError:
            sha = await via.execute("SCRIPT", "LOAD", _ONCE)
            self._once.sha = sha.decode() if isinstance(sha, bytes) else str(sha)
            return await via.execute("EVALSHA", self._once.sha, len(keys), *keys, *args)

    def _count(self, streams: Sequence[str], flags: Sequence[bool]) -> None:
        tallies: dict[str, list[int]] = {}
        for stream, fresh in zip(streams, flags, strict=True):
            tallies.setdefault(stream, [0, 0])[0 if fresh else 1] += 1
        for stream, (new, skipped) in tallies.items():
            self._tally(stream, new, skipped)

    def _tally(self, stream: str, new: int, skipped: int) -> None:
        """Count a once-publication; both series exist (at 0) from a stream's first one, so a dashboard's
        rate of skipped duplicates reads 0 rather than "no data" while there were none."""
        self.published.labels(stream).inc(new)
        self.duplicates.labels(stream).inc(skipped)

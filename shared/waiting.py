"""Reading tradeloop's streams from outside a service: decode entries, wait for a matching event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from shared.broker import Redis
from shared.messages import STREAM_MESSAGES, Message
from shared.streams import Stream


def decode_entry(stream: Stream, fields: dict[Any, Any]) -> Message:
    """Decode a plain-JSON stream entry (``__data__``) into its declared message type."""
    raw = fields.get(b"__data__", fields.get("__data__"))
    if raw is None:
        raise ValueError(f"entry on {stream.value} has no __data__ field")
    return STREAM_MESSAGES[stream].model_validate_json(raw)


async def tail_ids(redis: Redis, streams: Sequence[Stream]) -> dict[str, str]:
    """The id of the newest entry of each stream (``0-0`` when empty): read after it to see only new ones."""
    ids = {}
    for stream in streams:
        newest: Any = await redis.xrevrange(stream.value, count=1)
        ids[stream.value] = newest[0][0].decode() if newest else "0-0"
    return ids


async def wait_for(
    redis: Redis,
    streams: Sequence[Stream],
    match: Callable[[Message], bool],
    *,
    after: dict[str, str],
    timeout: float,
) -> Message | None:
    """Return the first new message on ``streams`` (after ``after`` ids) for which ``match`` holds."""
    deadline = time.monotonic() + timeout
    by_name = {s.value: s for s in streams}
    positions = {name: entry for name, entry in after.items() if name in by_name}  # ``after`` may name more
    while (remaining := deadline - time.monotonic()) > 0:
        block = max(1, int(min(remaining, 1.0) * 1000))
        replies: Any = await redis.xread(dict(positions), block=block, count=100)  # type: ignore[arg-type]
        for name, entries in replies or []:
            key = name.decode() if isinstance(name, bytes) else name
            for entry, fields in entries:
                positions[key] = entry.decode() if isinstance(entry, bytes) else entry
                try:
                    message = decode_entry(by_name[key], fields)
                except ValueError:
                    continue
                if match(message):
                    return message
        await asyncio.sleep(0)
    return None

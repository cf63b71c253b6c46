"""Broker helpers: the RedisBroker, consumer groups at id 0, reclaimers and the dead-letter stream.

Delivery semantics, declared here once for every service:

* work streams are read through a consumer group created at id ``0`` before the first subscriber
  starts (FastStream would create it at ``$`` and skip older entries);
* a message is acked only after its handler returned (``AckPolicy.REJECT_ON_ERROR``: on error it
  stays pending);
* a reclaimer (XAUTOCLAIM after ``reclaim_idle_ms``) in the same group finishes the pending
  messages of a dead consumer;
* a payload that fails validation, or a :class:`PermanentError`, goes straight to
  ``<stream>.dlq``; any other error goes there after ``max_deliveries`` deliveries.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from faststream import AckPolicy, BaseMiddleware, StreamMessage
from faststream.redis import RedisBroker, RedisRouter, StreamSub
from faststream.redis.message import RedisStreamMessage
from pydantic import ValidationError
from redis.exceptions import ResponseError

from shared.errors import PermanentError
from shared.periodic import every
from shared.settings import ServiceSettings
from shared.streams import DLQ_MAXLEN, WORK_GROUPS, Group, Stream, dead_letter_stream

log = logging.getLogger(__name__)

Redis = aioredis.Redis


def make_redis(url: str) -> Redis:
    """Create a redis.asyncio client (bytes replies)."""
    return aioredis.Redis.from_url(url, decode_responses=False, health_check_interval=30)


async def ensure_group(redis: Redis, stream: str, group: str) -> bool:
    """Create ``group`` on ``stream`` at id 0 (creating the stream); return False if it existed."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise
        return False
    return True


async def ensure_work_groups(redis: Redis, groups: Iterable[Group] | None = None) -> None:
    """Create every work group (or only ``groups``) at id 0 before subscribers start."""
    wanted = set(groups) if groups is not None else None
    for stream, stream_groups in WORK_GROUPS.items():
        for group in stream_groups:
            if wanted is None or group in wanted:
                await ensure_group(redis, stream.value, group.value)


def make_broker(settings: ServiceSettings, redis: Redis, middlewares: Iterable[Any] = ()) -> RedisBroker:
    """Build the service's broker with the dead-letter middleware installed."""
    return RedisBroker(
        settings.redis_url,
        middlewares=(dead_letter_middleware(redis, settings.max_deliveries), *middlewares),
        graceful_timeout=15.0,
        log_level=logging.DEBUG,
    )


def _is_permanent(error: BaseException) -> bool:
    return isinstance(error, ValidationError | PermanentError | json.JSONDecodeError | UnicodeDecodeError)


async def dead_letter(
    redis: Redis,
    *,
    stream: str,
    entry_id: bytes | str,
    group: str | None,
    payload: bytes,
    error: BaseException | str,
    deliveries: int,
) -> bytes:
    """XADD a dead-letter entry holding the original payload and the error; return its id."""
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    fields: dict[Any, Any] = {
        "source_stream": stream,
        "source_id": entry_id,
        "group": group or "",
        "error": reason[:4000],
        "deliveries": str(deliveries),
        "failed_at": str(int(time.time() * 1000)),
        "payload": payload,
    }
    entry = await redis.xadd(dead_letter_stream(stream), fields, maxlen=DLQ_MAXLEN, approximate=True)
    return entry if isinstance(entry, bytes) else str(entry).encode()


def dead_letter_middleware(redis: Redis, max_deliveries: int) -> Callable[..., BaseMiddleware]:
    """Return a middleware factory that dead-letters poison and exhausted messages."""

    class DeadLetterMiddleware(BaseMiddleware):
        async def consume_scope(
            self, call_next: Callable[[StreamMessage[Any]], Awaitable[Any]], msg: StreamMessage[Any]
        ) -> Any:
            try:
                return await call_next(msg)
            except Exception as error:
                if not (isinstance(msg, RedisStreamMessage) and msg.group):
                    raise
                deliveries = await msg.get_delivery_count()
                if not _is_permanent(error) and deliveries < max_deliveries:
                    log.warning("delivery %d/%d failed, left pending: %r", deliveries, max_deliveries, error)
                    raise
                stream = msg.raw_message["channel"]
                entry_id = msg.raw_message["message_ids"][0].decode()
                await dead_letter(
                    redis,
                    stream=stream,
                    entry_id=entry_id,
                    group=msg.group,
                    payload=msg.body,
                    error=error,
                    deliveries=deliveries,
                )
                log.error("dead-lettered %s %s after %d deliveries: %r", stream, entry_id, deliveries, error)
                return None  # swallowed → acked → removed from the PEL

    return DeadLetterMiddleware


Handler = Callable[..., Awaitable[Any]]


def work_subscriber(
    router: RedisRouter | RedisBroker,
    stream: Stream,
    group: Group,
    settings: ServiceSettings,
    *,
    max_records: int | None = 10,
) -> Callable[[Handler], Handler]:
    """Subscribe a handler to a work stream twice: a group reader and a reclaimer for the same group.

    The handler is acked after it returns; on error it stays pending, the reclaimer retries it
    after ``reclaim_idle_ms`` and the dead-letter middleware caps the number of deliveries.
    """
    consumer = settings.consumer_name

    def decorate(handler: Handler) -> Handler:
        reader = router.subscriber(
            stream=StreamSub(
                stream.value,
                group=group.value,
                consumer=consumer,
                max_records=max_records,
                polling_interval=settings.stream_block_ms,
            ),
            ack_policy=AckPolicy.REJECT_ON_ERROR,
            title=f"{stream.value}:{group.value}",
        )
        reclaimer = router.subscriber(
            stream=StreamSub(
                stream.value,
                group=group.value,
                consumer=f"{consumer}-reclaim",
                min_idle_time=settings.reclaim_idle_ms,
                polling_interval=settings.reclaim_poll_ms,
            ),
            ack_policy=AckPolicy.REJECT_ON_ERROR,
            title=f"{stream.value}:{group.value}:reclaim",
            include_in_schema=False,
        )
        return reclaimer(reader(handler))  # type: ignore[no-any-return]

    return decorate


def fanout_subscriber(router: RedisRouter | RedisBroker, stream: Stream, settings: ServiceSettings) -> Any:
    """Subscribe every replica to ``stream`` (plain XREAD from ``$``, no group, BLOCK ``stream_block_ms``):
    broadcast events."""
    return router.subscriber(stream=StreamSub(stream.value, polling_interval=settings.stream_block_ms))


def entry_id(msg: RedisStreamMessage) -> str:
    """Return the Redis stream entry id of a consumed message (stable across redeliveries)."""
    raw = msg.raw_message["message_ids"][0]
    return raw.decode() if isinstance(raw, bytes) else str(raw)


@contextlib.asynccontextmanager
async def hold_lease(
    redis: Redis, *, stream: str, group: str, consumer: str, entry: str, every_seconds: float
) -> AsyncIterator[None]:
    """Keep a long-running message's idle time low (XCLAIM JUSTID) so no reclaimer steals it."""

    async def renew() -> None:
        await redis.xclaim(stream, group, consumer, min_idle_time=0, message_ids=[entry], justid=True)

    async with every(every_seconds, renew, what=f"lease renewal for {entry}"):
        yield

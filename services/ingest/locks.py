"""Short Redis locks per (market, interval), so ingest replicas do not fetch the same pages.

Correctness never depends on them (inserts are idempotent and CandleClosed is published once per
key); they only keep replicas from spending the exchange's rate limit twice. A lock expires by
itself when its holder dies, and is renewed while its holder works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

from shared.broker import Redis
from shared.tasks import cancel_and_wait, pause

log = logging.getLogger(__name__)

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class SeriesLocks:
    """Locks named ``tradeloop:ingest:lock:{market}:{timeframe}``, held by one replica at a time."""

    def __init__(self, redis: Redis, ttl_seconds: float, owner: str | None = None) -> None:
        self.redis = redis
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.owner = owner or uuid.uuid4().hex
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)

    @staticmethod
    def key(market: str, timeframe: str) -> str:
        """The Redis key of one series' lock."""
        return f"tradeloop:ingest:lock:{market}:{timeframe}"

    @contextlib.asynccontextmanager
    async def hold(self, market: str, timeframe: str) -> AsyncIterator[bool]:
        """Try to take the lock; yield whether it was taken, renewing it until the block ends."""
        key = self.key(market, timeframe)
        token = f"{self.owner}:{uuid.uuid4().hex}"
        taken = bool(await self.redis.set(key, token, nx=True, px=self.ttl_ms))
        if not taken:
            yield False
            return
        renewer = asyncio.create_task(self._keep(key, token))
        try:
            yield True
        finally:
            await cancel_and_wait(renewer)
            try:
                await self._release(keys=[key], args=[token])
            except Exception as error:  # it expires by itself
                log.warning("releasing the ingest lock %s failed: %r", key, error)

    async def _keep(self, key: str, token: str) -> None:
        while True:
            await pause(self.ttl_ms / 3000)
            try:
                if not await self._renew(keys=[key], args=[token, self.ttl_ms]):
                    log.warning("lost the ingest lock %s (expired); work continues, duplicates are harmless", key)
                    return
            except Exception as error:
                log.warning("renewing the ingest lock %s failed: %r", key, error)

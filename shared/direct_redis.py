"""One Redis connection used directly, for a hot path that sends one command at a time.

redis-py's client wraps every command in layers a hot path does not need: a pool checkout and
release, a retry wrapper, its observability recorder, a health check and a timeout task per send. On
the 2-core machines tradeloop is measured on, a one-entry once-publication cost the client 146–176 µs of
CPU through the pool and 109–128 µs on a connection of its own (``bench/hot_swap.py`` prints both, same
run). The inference candle path sends two commands per candle (XREADGROUP, then the champions'
publication), so those microseconds are a large part of its CPU.

A :class:`DirectConnection` serves one caller at a time (a second concurrent command raises rather
than interleaving replies). A failure other than a Redis error reply drops the connection; the next
command reconnects, so a caller's retry loop sees the same errors as with the client.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.broker import Redis


class DirectConnection:
    """A private connection with the client's settings (URL, database, protocol, connect timeout).

    The client's socket timeout bounds each command as a whole here (one ``asyncio.timeout``): on the
    connection itself it would wrap every send in ``asyncio.wait_for``, a task per command.
    """

    def __init__(self, redis: Redis) -> None:
        pool = redis.connection_pool
        self.timeout: float | None = pool.connection_class(**pool.connection_kwargs).socket_timeout
        self._connection: AbstractConnection = pool.connection_class(
            **{**pool.connection_kwargs, "socket_timeout": None})
        self._busy = False

    async def execute(self, *args: str | bytes | int | float, timeout: float | None = None) -> Any:
        """Send one command and return its raw reply (RESP as parsed, bytes not decoded).

        ``timeout`` bounds the command, reply included (default: the client's socket timeout; None there:
        unbounded); an error reply raises its :class:`ResponseError` and keeps the connection.
        """
        if self._busy:
            raise RuntimeError("a DirectConnection serves one command at a time")
        self._busy = True
        connection = self._connection
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):  # redis-py's own read timeout returns None and keeps the socket
                await connection.send_command(*args)
                return await connection.read_response()
        except ResponseError:
            raise
        except TimeoutError as error:
            await connection.disconnect(nowait=True)
            raise RedisTimeoutError(f"no reply to {args[0]!r} within {limit} s") from error
        except BaseException:
            await connection.disconnect(nowait=True)  # a reply may be half read: never reuse the socket
            raise
        finally:
            self._busy = False

    async def close(self) -> None:
        """Close the connection (a later command opens a new one)."""
        await self._connection.disconnect()

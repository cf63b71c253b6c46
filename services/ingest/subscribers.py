"""Consumes trade-executed and trade-closed (group ingest); produces trade-outcome-recorded.

Malformed payloads and refused events go to ``<stream>.dlq`` (the broker's dead-letter
middleware); events that wait too long for their prediction are dead-lettered by the sweep.
"""

from __future__ import annotations

from faststream.redis import RedisRouter

from services.ingest.outcomes import OutcomeDeps, record_trade_event
from shared.broker import work_subscriber
from shared.messages import TradeClosed, TradeExecuted
from shared.settings import ServiceSettings
from shared.streams import Group, Stream


def build_router(deps: OutcomeDeps, settings: ServiceSettings) -> RedisRouter:
    """Subscribe the trade-outcome handlers (reader + reclaimer each)."""
    router = RedisRouter()

    @work_subscriber(router, Stream.TRADE_EXECUTED, Group.INGEST, settings)
    async def on_trade_executed(event: TradeExecuted) -> None:
        await record_trade_event(event, deps)

    @work_subscriber(router, Stream.TRADE_CLOSED, Group.INGEST, settings)
    async def on_trade_closed(event: TradeClosed) -> None:
        await record_trade_event(event, deps)

    return router

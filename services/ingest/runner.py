"""Backfill, then follow the source: every newly closed candle is stored and published once."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest.handlers import BatchResult, IngestMetrics, store_and_publish
from services.ingest.repository import latest_open_time
from services.ingest.sources import CandleSource
from shared.messages import timeframe_seconds
from shared.publishing import EventPublisher
from shared.tasks import pause

log = logging.getLogger(__name__)


@dataclass
class IngestRunner:
    """Pulls closed candles for every (market, timeframe) from ``source``."""

    source: CandleSource
    markets: list[str]
    timeframes: list[str]
    start_ms: int | None
    batch_size: int
    sessions: async_sessionmaker[AsyncSession]
    publisher: EventPublisher
    metrics: IngestMetrics

    async def _resume_from(self, market: str, timeframe: str, interval_ms: int) -> int:
        newest = await latest_open_time(self.sessions, market, timeframe)
        if newest is not None:
            return int(newest.timestamp() * 1000) + interval_ms
        return self.start_ms if self.start_ms is not None else 0

    async def catch_up(self, market: str, timeframe: str) -> BatchResult:
        """Fetch, store and publish every closed candle after the newest stored one."""
        interval_ms = timeframe_seconds(timeframe) * 1000
        start = await self._resume_from(market, timeframe, interval_ms)
        now = self.source.now_ms()
        totals = [0, 0, 0, 0]
        while start + interval_ms <= now:
            end = min(start + self.batch_size * interval_ms, now)
            candles = await self.source.fetch(market, interval_ms, start, end)
            result = await store_and_publish(
                market=market,
                timeframe=timeframe,
                candles=candles,
                source=self.source.name,
                sessions=self.sessions,
                publisher=self.publisher,
                metrics=self.metrics,
            )
            for i, value in enumerate((result.received, result.rejected, result.stored, result.published)):
                totals[i] += value
            start = end
        return BatchResult(*totals)

    async def run_once(self) -> BatchResult:
        """One pass over every (market, timeframe)."""
        totals = [0, 0, 0, 0]
        for market in self.markets:
            for timeframe in self.timeframes:
                result = await self.catch_up(market, timeframe)
                for i, value in enumerate((result.received, result.rejected, result.stored, result.published)):
                    totals[i] += value
        return BatchResult(*totals)

    async def follow(self, poll_seconds: float) -> None:
        """Run passes forever; a failing pass is logged and retried on the next tick."""
        while True:
            try:
                result = await self.run_once()
                if result.published:
                    log.info("ingested", extra={"stored": result.stored, "published": result.published})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ingest pass failed; retrying next tick")
            await pause(poll_seconds)

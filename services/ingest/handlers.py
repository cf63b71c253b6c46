"""Store a batch of closed candles once and publish CandleClosed once per candle."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest.repository import insert_candles, ms_to_datetime
from services.ingest.validation import RawCandle, validate_candle
from shared.messages import CandleClosed, timeframe_seconds
from shared.publishing import EventPublisher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestMetrics:
    """Ingest counters and gauges (registered on the service's registry)."""

    stored: Counter
    published: Counter
    rejected: Counter
    newest: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None) -> IngestMetrics:
        labels = ["market", "timeframe"]
        return cls(
            stored=Counter("tradeloop_candles_stored", "Candles newly stored.", labels, registry=registry),
            published=Counter(
                "tradeloop_candles_published", "CandleClosed events published.", labels, registry=registry
            ),
            rejected=Counter(
                "tradeloop_candles_rejected", "Invalid candles refused.", [*labels, "reason"], registry=registry
            ),
            newest=Gauge(
                "tradeloop_candle_newest_open_time_seconds",
                "Open time of the newest stored candle (unix seconds).",
                labels,
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class BatchResult:
    """What one batch did."""

    received: int
    rejected: int
    stored: int
    published: int


def candle_key(market: str, timeframe: str, open_time_ms: int) -> str:
    """Dedupe key of a candle's CandleClosed publication."""
    return f"candle:{market}:{timeframe}:{open_time_ms}"


async def store_and_publish(
    *,
    market: str,
    timeframe: str,
    candles: Sequence[RawCandle],
    source: str,
    sessions: async_sessionmaker[AsyncSession],
    publisher: EventPublisher,
    metrics: IngestMetrics,
) -> BatchResult:
    """Validate, store (idempotently), then publish CandleClosed exactly once per candle.

    Publication happens after the commit, keyed per (market, timeframe, open_time): rerunning a
    batch after a crash publishes only what was not published before.
    """
    interval_ms = timeframe_seconds(timeframe) * 1000
    unique: dict[int, RawCandle] = {}
    rejected = 0
    for candle in candles:
        reason = validate_candle(candle, interval_ms)
        if reason is not None:
            rejected += 1
            metrics.rejected.labels(market, timeframe, reason).inc()
            log.warning("rejected candle %s %s %d: %s", market, timeframe, candle.open_time_ms, reason)
            continue
        unique[candle.open_time_ms] = candle
    ordered = [unique[t] for t in sorted(unique)]
    rows = [
        {
            "market": market,
            "timeframe": timeframe,
            "open_time": ms_to_datetime(c.open_time_ms),
            "open": c.open,
            "high": c.high,
            "low": c.low,
            "close": c.close,
            "volume": c.volume,
            "source": source,
        }
        for c in ordered
    ]
    stored = await insert_candles(sessions, rows) if rows else 0
    events = [
        (
            candle_key(market, timeframe, c.open_time_ms),
            CandleClosed(
                market=market,
                timeframe=timeframe,
                open_time=ms_to_datetime(c.open_time_ms),
                open=c.open,
                high=c.high,
                low=c.low,
                close=c.close,
                volume=c.volume,
                source=source,
            ),
        )
        for c in ordered
    ]
    published = await publisher.publish_once(events)
    metrics.stored.labels(market, timeframe).inc(stored)
    metrics.published.labels(market, timeframe).inc(published)
    if ordered:
        metrics.newest.labels(market, timeframe).set(ordered[-1].open_time_ms / 1000)
    return BatchResult(received=len(candles), rejected=rejected, stored=stored, published=published)

"""Store closed candles once and publish CandleClosed once per candle; dead-letter invalid ones.

Order per page: validate → one transaction (insert candles, re-derive the gaps around them) →
publish CandleClosed once per (market, timeframe, open_time) → mark the range complete in the
ledger. Any crash on the way is repaired by a rerun: inserts are idempotent, publication is
deduplicated by key, and the ledger only ever records what was published.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest import ledger
from services.ingest.metrics import IngestMetrics
from services.ingest.planning import Span, subtract
from services.ingest.publishing import CandlePublisher
from services.ingest.repository import (
    around,
    find_gaps,
    insert_candle_rows,
    insert_candles,
    lock_series,
    ms_to_datetime,
    replace_gaps,
)
from services.ingest.validation import RawCandle, validate_candle
from shared.broker import dead_letter
from shared.messages import CandleClosed, timeframe_seconds
from shared.publishing import EventPublisher
from shared.streams import Stream

__all__ = [
    "BatchResult",
    "IngestMetrics",
    "StoreDeps",
    "StoredWindow",
    "WindowResult",
    "announce_window",
    "persist_window",
    "store_and_publish",
    "store_window",
]

log = logging.getLogger(__name__)

_UUID_SPACE = 1 << 128


@dataclass(frozen=True)
class BatchResult:
    """What one batch did."""

    received: int
    rejected: int
    stored: int
    published: int


@dataclass
class StoreDeps:
    """What storing candles needs."""

    sessions: async_sessionmaker[AsyncSession]
    publisher: EventPublisher
    metrics: IngestMetrics
    newest_ms: dict[tuple[str, str], int] = field(default_factory=dict)
    """Newest open time stored per (market, timeframe) by this process (for the gauge)."""
    candles: CandlePublisher = field(init=False)

    def __post_init__(self) -> None:
        self.candles = CandlePublisher(self.publisher)


@dataclass(frozen=True)
class WindowResult:
    """What persisting one page (window) did."""

    received: int
    rejected: int
    stored: int
    published: int
    gap_intervals: int
    complete_until: int | None


def candle_key(market: str, timeframe: str, open_time_ms: int) -> str:
    """Dedupe key of a candle's CandleClosed publication."""
    return f"candle:{market}:{timeframe}:{open_time_ms}"


def _closed_event(market: str, timeframe: str, candle: RawCandle, source: str) -> tuple[str, CandleClosed]:
    return candle_key(market, timeframe, candle.open_time_ms), CandleClosed(
        market=market,
        timeframe=timeframe,
        open_time=ms_to_datetime(candle.open_time_ms),
        open=candle.open,
        high=candle.high,
        low=candle.low,
        close=candle.close,
        volume=candle.volume,
        source=source,
    )


def _iso(ms: int) -> str:
    if ms % 1000:
        return ms_to_datetime(ms).isoformat().replace("+00:00", "Z")
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


def closed_payloads(
    market: str, timeframe: str, candles: Sequence[RawCandle], source: str
) -> list[tuple[str, str, str]]:
    """(dedupe key, event id, JSON) of each candle's CandleClosed, for candles that passed validation.

    The envelope is validated once through the pydantic model; the JSON of each candle is then
    formatted directly (10x faster than a model per candle; the schema test checks equivalence).
    """
    if not candles:
        return []
    _closed_event(market, timeframe, candles[0], source)  # raises if market/timeframe/source are invalid
    head = f'"occurred_at":"{_iso(int(time.time() * 1000))}","schema_version":1,'
    names = f'"market":{json.dumps(market)},"timeframe":{json.dumps(timeframe)},'
    tail = f',"source":{json.dumps(source)}}}'
    base = uuid.uuid4().int
    payloads = []
    for offset, c in enumerate(candles):
        event_id = str(uuid.UUID(int=(base + offset) % _UUID_SPACE))
        payloads.append((
            candle_key(market, timeframe, c.open_time_ms),
            event_id,
            f'{{"event_id":"{event_id}",{head}{names}"open_time":"{_iso(c.open_time_ms)}",'
            f'"open":{c.open!r},"high":{c.high!r},"low":{c.low!r},"close":{c.close!r},"volume":{c.volume!r}{tail}',
        ))
    return payloads


def _row(market: str, timeframe: str, candle: RawCandle, source: str) -> dict[str, object]:
    return {
        "market": market,
        "timeframe": timeframe,
        "open_time": ms_to_datetime(candle.open_time_ms),
        "open": candle.open,
        "high": candle.high,
        "low": candle.low,
        "close": candle.close,
        "volume": candle.volume,
        "source": source,
    }


async def _valid(
    market: str, timeframe: str, candles: Sequence[RawCandle], source: str, publisher: EventPublisher,
    metrics: IngestMetrics,
) -> tuple[list[RawCandle], int]:
    """Validate, de-duplicate and sort; dead-letter the invalid candles with their reason."""
    interval_ms = timeframe_seconds(timeframe) * 1000
    unique: dict[int, RawCandle] = {}
    rejected = 0
    for candle in candles:
        reason = validate_candle(candle, interval_ms)
        if reason is None:
            unique[candle.open_time_ms] = candle
            continue
        rejected += 1
        metrics.rejected.labels(market, timeframe, reason).inc()
        log.warning("rejected candle %s %s %d: %s", market, timeframe, candle.open_time_ms, reason)
        payload = json.dumps({"market": market, "timeframe": timeframe, "source": source, **asdict(candle)})
        await dead_letter(
            publisher.redis,
            stream=Stream.CANDLE_CLOSED.value,
            entry_id=f"{source}:{candle_key(market, timeframe, candle.open_time_ms)}",
            group="ingest",
            payload=payload.encode(),
            error=f"invalid candle: {reason}",
            deliveries=0,
        )
        metrics.dead_letters.labels(Stream.CANDLE_CLOSED.dlq).inc()
    return [unique[t] for t in sorted(unique)], rejected


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
    """Validate, store (idempotently), then publish CandleClosed exactly once per candle (no ledger, no gaps).

    Publication happens after the commit, keyed per (market, timeframe, open_time): rerunning a
    batch after a crash publishes only what was not published before.
    """
    ordered, rejected = await _valid(market, timeframe, candles, source, publisher, metrics)
    rows = [_row(market, timeframe, c, source) for c in ordered]
    stored = await insert_candles(sessions, rows) if rows else 0
    published = await publisher.publish_once([_closed_event(market, timeframe, c, source) for c in ordered])
    metrics.stored.labels(market, timeframe).inc(stored)
    metrics.published.labels(market, timeframe).inc(published)
    if ordered:
        metrics.newest.labels(market, timeframe).set(ordered[-1].open_time_ms / 1000)
    return BatchResult(received=len(candles), rejected=rejected, stored=stored, published=published)


async def _store_window(
    session: AsyncSession,
    market: str,
    timeframe: str,
    window: Span,
    rows: Sequence[dict[str, object]],
    known: Sequence[Span],
) -> tuple[int, int]:
    """Insert ``rows`` and re-derive the gaps around them.

    A gap runs between two stored candles; one that reaches outside ``window`` counts only if the
    stretch up to that neighbour is fetched completely (the ledger, or ``known``: windows already
    committed whose ledger entry is on its way), so the unfetched part of a backfill is never
    mistaken for a gap.
    """
    interval_ms = timeframe_seconds(timeframe) * 1000
    await lock_series(session, market, timeframe)
    stored = await insert_candle_rows(session, rows)
    times = await around(session, market, timeframe, ms_to_datetime(window.start), ms_to_datetime(window.end))
    previous = times[0] if times and times[0] < window.start else None
    following = times[-1] if times and times[-1] >= window.end else None
    if previous is not None or following is not None:
        complete = [window, *known, *await ledger.covered_in(session, market, timeframe)]
        if previous is not None and subtract([Span(previous, window.start)], complete):
            times, previous = times[1:], None
        if following is not None and subtract([Span(window.end, following)], complete):
            times, following = times[:-1], None
    low = ms_to_datetime(previous if previous is not None else window.start)
    high = ms_to_datetime(following if following is not None else window.end)
    new_gaps = await replace_gaps(session, market, timeframe, (low, high), find_gaps(times, interval_ms))
    return stored, new_gaps


@dataclass(frozen=True)
class StoredWindow:
    """A page committed to the database, not yet announced."""

    market: str
    timeframe: str
    window: Span
    source: str
    candles: list[RawCandle]
    """The valid candles, ascending."""
    received: int
    rejected: int
    stored: int
    gap_intervals: int


async def store_window(
    *,
    market: str,
    timeframe: str,
    window: Span,
    candles: Sequence[RawCandle],
    source: str,
    deps: StoreDeps,
    known: Sequence[Span] = (),
) -> StoredWindow:
    """Validate a page (dead-lettering invalid candles), then store it and its gaps in one transaction."""
    inside = [c for c in candles if window.start <= c.open_time_ms < window.end]
    ordered, rejected = await _valid(market, timeframe, inside, source, deps.publisher, deps.metrics)
    rows = [_row(market, timeframe, c, source) for c in ordered]
    async with deps.sessions() as session, session.begin():
        stored, gap_intervals = await _store_window(session, market, timeframe, window, rows, known)
    return StoredWindow(market, timeframe, window, source, ordered, len(candles), rejected, stored, gap_intervals)


async def announce_window(stored: StoredWindow, *, deps: StoreDeps, complete_until: int | None) -> WindowResult:
    """Publish a stored page's CandleClosed once each, then mark ``[window.start, complete_until)`` fetched.

    ``complete_until`` None leaves the ledger alone (imports of files).
    """
    market, timeframe, window, ordered = stored.market, stored.timeframe, stored.window, stored.candles
    published = await deps.candles.publish_once(closed_payloads(market, timeframe, ordered, stored.source))
    if complete_until is not None and complete_until > window.start:
        await ledger.mark_complete(deps.sessions, market, timeframe, Span(window.start, complete_until))
    metrics = deps.metrics
    metrics.stored.labels(market, timeframe).inc(stored.stored)
    metrics.published.labels(market, timeframe).inc(published)
    metrics.gaps.labels(market, timeframe).inc(stored.gap_intervals)
    if ordered and ordered[-1].open_time_ms > deps.newest_ms.get((market, timeframe), -1):
        deps.newest_ms[market, timeframe] = ordered[-1].open_time_ms
        metrics.newest.labels(market, timeframe).set(ordered[-1].open_time_ms / 1000)
    return WindowResult(
        received=stored.received,
        rejected=stored.rejected,
        stored=stored.stored,
        published=published,
        gap_intervals=stored.gap_intervals,
        complete_until=complete_until,
    )


async def persist_window(
    *,
    market: str,
    timeframe: str,
    window: Span,
    candles: Sequence[RawCandle],
    source: str,
    deps: StoreDeps,
    complete_until: int | None,
) -> WindowResult:
    """Store a page and its gaps, publish its candles once, then mark ``[window.start, complete_until)`` fetched."""
    stored = await store_window(
        market=market, timeframe=timeframe, window=window, candles=candles, source=source, deps=deps
    )
    return await announce_window(stored, deps=deps, complete_until=complete_until)

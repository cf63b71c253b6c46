"""Backfill and follow exchange candles: fetch only what the ledger lacks, newest page first.

Each pass asks the exchange for its time, plans every (market, interval) (regimes, fallback to
the global range, the live tail), subtracts the ledger, and fetches the rest in pages of at most
1440 candles, newest first. Pages are fetched ahead (``prefetch_pages``) while earlier ones are
stored, so the database and the exchange work at the same time. Only closed candles are asked
for (``end`` = the start of the forming candle). A replica works on a series only while it holds
that series' Redis lock; others skip it for this pass.

A page whose oldest candle is later than the page start was either truncated by the exchange or
starts with intervals without trades: the client re-asks for that head once, so truncation costs
one request and a real gap one empty answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.ingest import ledger
from services.ingest.exchange.bitvavo import BitvavoClient
from services.ingest.handlers import (
    StoreDeps,
    StoredWindow,
    WindowResult,
    publish_window,
    store_window,
    window_done,
)
from services.ingest.locks import SeriesLocks
from services.ingest.planning import (
    RegimePeriod,
    SeriesPlan,
    Span,
    align_down,
    pages,
    plan_series,
    resume_tail,
    subtract,
    union,
)
from services.ingest.repository import count_candles, latest_open_time, ms_to_datetime
from services.ingest.settings import IngestSettings
from services.ingest.validation import RawCandle
from shared.messages import timeframe_seconds
from shared.tasks import pause

log = logging.getLogger(__name__)

SOURCE = "bitvavo"
_RECORD_BACKLOG = 8
"""Published pages that may wait for the ledger (recorded together when they do)."""


@dataclass(frozen=True)
class _Published:
    page: StoredWindow
    published: int
    until: int
    """The page counts as fetched over ``[page.window.start, until)``."""


@dataclass
class SeriesReport:
    """What one pass did for one (market, interval)."""

    market: str
    timeframe: str
    locked_out: bool = False
    pages: int = 0
    received: int = 0
    rejected: int = 0
    stored: int = 0
    published: int = 0
    gap_intervals: int = 0
    used_fallback: bool = False

    def add(self, result: WindowResult) -> None:
        self.pages += 1
        self.received += result.received
        self.rejected += result.rejected
        self.stored += result.stored
        self.published += result.published
        self.gap_intervals += result.gap_intervals


@dataclass
class PassReport:
    """What one pass did, per series."""

    now_ms: int
    series: list[SeriesReport] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return sum(report.stored for report in self.series)

    @property
    def published(self) -> int:
        return sum(report.published for report in self.series)


@dataclass
class ExchangeIngestor:
    """Keeps every configured (market, interval) complete from the exchange."""

    settings: IngestSettings
    client: BitvavoClient
    store: StoreDeps
    locks: SeriesLocks
    regimes: dict[str, list[RegimePeriod]] = field(default_factory=dict)
    _fallback: dict[tuple[str, str], bool] = field(default_factory=dict, init=False, repr=False)

    async def run_once(self, now_ms: int | None = None) -> PassReport:
        """One pass over every series at the exchange's current time (or ``now_ms``)."""
        now = await self.client.server_time() if now_ms is None else now_ms
        series = [(m, t) for m in self.settings.markets for t in self.settings.timeframes]
        reports = await asyncio.gather(*(self.ensure(market, timeframe, now) for market, timeframe in series))
        return PassReport(now, list(reports))

    async def ensure(self, market: str, timeframe: str, now_ms: int) -> SeriesReport:
        """Fetch whatever (market, timeframe) lacks at ``now_ms``, unless another replica is on it."""
        report = SeriesReport(market, timeframe)
        async with self.locks.hold(market, timeframe) as held:
            if not held:
                report.locked_out = True
                return report
            plan = plan_series(self.settings, self.regimes, market, timeframe, now_ms)
            plan = resume_tail(plan, await ledger.covered(self.store.sessions, market, timeframe))
            await self._fill(plan, plan.targets(use_fallback=False), now_ms, report)
            if plan.fallback and await self._needs_fallback(plan):
                report.used_fallback = True
                await self._fill(plan, [plan.fallback], now_ms, report)
        await self._update_lag(market, timeframe, now_ms)
        return report

    async def _needs_fallback(self, plan: SeriesPlan) -> bool:
        """Whether the regime periods yielded no candle (decided once they are all fetched)."""
        key = (plan.market, plan.timeframe)
        if key in self._fallback:
            return self._fallback[key]
        spans = [(ms_to_datetime(s.start), ms_to_datetime(s.end)) for s in plan.primary]
        empty = await count_candles(self.store.sessions, plan.market, plan.timeframe, spans) == 0
        done = not subtract(plan.primary, await ledger.covered(self.store.sessions, plan.market, plan.timeframe))
        if done:
            self._fallback[key] = empty
            if empty:
                log.info("no candles in the regimes of %s %s; using the global range", *key)
        return empty

    async def _fill(self, plan: SeriesPlan, targets: Sequence[Span], now_ms: int, report: SeriesReport) -> None:
        """Fetch, store, publish and record the pages ``targets`` lack, as a four-stage pipeline.

        Fetching runs ``prefetch_pages`` ahead of storing, storing one page ahead of publishing, and
        publishing ahead of recording pages in the ledger, so the exchange, PostgreSQL and Redis work
        at the same time. A page enters the ledger only after it is published; pages waiting for
        the ledger together are recorded in one write per contiguous run.
        """
        missing = subtract(targets, await ledger.covered(self.store.sessions, plan.market, plan.timeframe))
        windows = [window for span in reversed(missing) for window in pages(span, plan.interval_ms)]
        if not windows:
            return
        fetched: asyncio.Queue[tuple[Span, list[RawCandle]] | None] = asyncio.Queue(self.settings.prefetch_pages)
        stored: asyncio.Queue[StoredWindow | None] = asyncio.Queue(1)
        published: asyncio.Queue[_Published | None] = asyncio.Queue(_RECORD_BACKLOG)
        fetch_failure: list[Exception] = []
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._fetch_all(plan, windows, fetched, fetch_failure))
                group.create_task(self._store_all(plan, fetched, stored))
                group.create_task(self._publish_all(plan, stored, published, now_ms))
                group.create_task(self._record_all(plan, published, report))
        except BaseExceptionGroup as failure:
            raise failure.exceptions[0] from failure
        if fetch_failure:
            raise fetch_failure[0]

    async def _fetch_all(
        self,
        plan: SeriesPlan,
        windows: Sequence[Span],
        out: asyncio.Queue[tuple[Span, list[RawCandle]] | None],
        failure: list[Exception],
    ) -> None:
        """Fetch the pages in order; on a failure, stop fetching but let the pages before it be stored."""
        try:
            for window in windows:
                await out.put((window, await self.fetch_page(plan.market, plan.timeframe, window)))
        except Exception as error:
            failure.append(error)
        await out.put(None)

    async def _store_all(
        self,
        plan: SeriesPlan,
        source: asyncio.Queue[tuple[Span, list[RawCandle]] | None],
        out: asyncio.Queue[StoredWindow | None],
    ) -> None:
        committed: list[Span] = []  # stored, ledger entry on its way: complete for deriving gaps
        while (item := await source.get()) is not None:
            window, candles = item
            result = await store_window(
                market=plan.market,
                timeframe=plan.timeframe,
                window=window,
                candles=candles,
                source=SOURCE,
                deps=self.store,
                known=committed,
            )
            committed.append(window)
            await out.put(result)
        await out.put(None)

    async def _publish_all(
        self,
        plan: SeriesPlan,
        source: asyncio.Queue[StoredWindow | None],
        out: asyncio.Queue[_Published | None],
        now_ms: int,
    ) -> None:
        while (page := await source.get()) is not None:
            until = self._complete_until(page.window, page.candles, plan.interval_ms, now_ms)
            await out.put(_Published(page, await publish_window(page, deps=self.store), until))
        await out.put(None)

    async def _record_all(
        self, plan: SeriesPlan, source: asyncio.Queue[_Published | None], report: SeriesReport
    ) -> None:
        """Record published pages in the ledger: whatever is waiting, one write per contiguous run."""
        finished = False
        while not finished:
            batch = [await source.get()]
            while not source.empty():
                batch.append(source.get_nowait())
            finished = batch[-1] is None
            done = [item for item in batch if item is not None]
            for span in union(Span(item.page.window.start, item.until) for item in done):
                await ledger.mark_complete(self.store.sessions, plan.market, plan.timeframe, span)
            for item in done:
                report.add(window_done(item.page, item.published, deps=self.store, complete_until=item.until))

    async def fetch_page(self, market: str, timeframe: str, window: Span) -> list[RawCandle]:
        """Every candle opening in ``window`` (at most 1440 intervals), ascending, duplicate-free."""
        page = await self.client.fetch_candles(market, timeframe, window.start, window.end)
        while page and page[0].open_time_ms > window.start:
            head = await self.client.fetch_candles(market, timeframe, window.start, page[0].open_time_ms)
            if not head:
                break  # the head of the window had no trades: a gap, not a truncation
            page = head + page
        return page

    def _complete_until(self, window: Span, candles: Sequence[RawCandle], interval_ms: int, now_ms: int) -> int:
        """How far ``window`` counts as fetched: recent empty intervals wait until ``confirm_intervals`` old."""
        confirmed = align_down(now_ms, interval_ms) - self.settings.confirm_intervals * interval_ms
        last = candles[-1].open_time_ms + interval_ms if candles else window.start
        return max(window.start, last, min(window.end, confirmed))

    async def _update_lag(self, market: str, timeframe: str, now_ms: int) -> None:
        newest = await latest_open_time(self.store.sessions, market, timeframe)
        if newest is not None:
            closed_at = newest.timestamp() + timeframe_seconds(timeframe)
            self.store.metrics.lag.labels(market, timeframe).set(max(0.0, now_ms / 1000 - closed_at))

    def sleep_seconds(self, now_ms: int) -> float:
        """Wall seconds until the next interval boundary of any series has passed (plus ``settle_seconds``)."""
        steps = [timeframe_seconds(t) * 1000 for t in self.settings.timeframes]
        boundary = min(align_down(now_ms, step) + step for step in steps)
        wait = (boundary - now_ms) / 1000 / self.settings.clock_speed + self.settings.settle_seconds
        return min(max(wait, 0.01), 60.0)

    async def follow(self) -> None:
        """Run passes forever, one after each interval boundary; a failing pass is retried."""
        failures = 0
        while True:
            try:
                report = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                log.exception("ingest pass failed (%d in a row); retrying", failures)
                await pause(min(60.0, self.settings.poll_seconds * 2 ** min(failures, 6)))
                continue
            failures = 0
            if report.published:
                log.info("ingested", extra={"stored": report.stored, "published": report.published})
            await pause(self.sleep_seconds(report.now_ms))

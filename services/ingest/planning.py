"""What to fetch: ranges of candle open times per (market, interval), regimes, and pages.

All times are UTC milliseconds; a :class:`Span` is half-open, ``[start, end)``, and holds the
open times of candles. Only closed candles are ever planned: a candle is closed when
``open_time + interval <= now``, so every plan ends at or before ``align_down(now)``.

``market_regimes.json`` maps a market to named regimes, each a list of periods::

    {"BTC-EUR": {"bull_2024": [["2024-01-01", "2024-03-01"]],
                 "crash": [{"start": "2024-08-01", "end": "2024-08-10"}]}}

A period's end may be empty (now). A market with regimes is fetched over its regime periods; when
it has none, or they yield no candle, the global range (``data_fetch_start_date`` ..
``data_fetch_end_date`` or now) is used instead (seed 000).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, TypeAdapter

from services.ingest.settings import IngestSettings
from shared.messages import timeframe_seconds

PAGE_CANDLES = 1440
"""Candles per exchange request (Bitvavo's maximum ``limit``)."""


@dataclass(frozen=True, order=True)
class Span:
    """Open times ``[start, end)`` in UTC ms."""

    start: int
    end: int

    def __bool__(self) -> bool:
        return self.end > self.start


def align_down(value_ms: int, step_ms: int) -> int:
    """Largest multiple of ``step_ms`` at or below ``value_ms``."""
    return value_ms - value_ms % step_ms


def align_up(value_ms: int, step_ms: int) -> int:
    """Smallest multiple of ``step_ms`` at or above ``value_ms``."""
    return -(-value_ms // step_ms) * step_ms


def to_ms(value: datetime) -> int:
    """UTC ms of an aware datetime."""
    return int(value.timestamp() * 1000)


def union(spans: Iterable[Span]) -> list[Span]:
    """Merge overlapping and touching spans; return them ascending."""
    merged: list[Span] = []
    for span in sorted(s for s in spans if s):
        if merged and span.start <= merged[-1].end:
            merged[-1] = Span(merged[-1].start, max(merged[-1].end, span.end))
        else:
            merged.append(span)
    return merged


def subtract(targets: Iterable[Span], covered: Iterable[Span]) -> list[Span]:
    """Parts of ``targets`` that no span of ``covered`` covers, ascending and merged."""
    holes = union(covered)
    missing: list[Span] = []
    for target in union(targets):
        cursor = target.start
        for hole in holes:
            if hole.end <= cursor or hole.start >= target.end:
                continue
            if hole.start > cursor:
                missing.append(Span(cursor, hole.start))
            cursor = max(cursor, hole.end)
        if cursor < target.end:
            missing.append(Span(cursor, target.end))
    return missing


def pages(span: Span, interval_ms: int, size: int = PAGE_CANDLES) -> Iterator[Span]:
    """Cut ``span`` into pages of at most ``size`` intervals, newest first (how Bitvavo pages)."""
    cursor = span.end
    while cursor > span.start:
        low = max(span.start, cursor - size * interval_ms)
        yield Span(low, cursor)
        cursor = low


def request_count(spans: Sequence[Span], interval_ms: int, size: int = PAGE_CANDLES) -> int:
    """Requests a fault-free fetch of ``spans`` costs: one per page."""
    return sum(-(-(span.end - span.start) // (size * interval_ms)) for span in spans)


# ------------------------------------------------------------------------------------ regimes


def _period(value: Any) -> Any:
    if isinstance(value, dict):
        return (value.get("start"), value.get("end"))
    return value


def _date(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    parsed = TypeAdapter(datetime).validate_python(value)
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


Period = Annotated[tuple[Any, Any], BeforeValidator(_period)]
_REGIMES = TypeAdapter(dict[str, dict[str, list[Period]]])


@dataclass(frozen=True)
class RegimePeriod:
    """One period of a named regime; ``end`` None = now."""

    regime: str
    start: datetime
    end: datetime | None


def parse_regimes(raw: Any) -> dict[str, list[RegimePeriod]]:
    """Validate a market_regimes mapping; return each market's periods."""
    parsed = _REGIMES.validate_python(raw)
    regimes: dict[str, list[RegimePeriod]] = {}
    for market, named in parsed.items():
        periods: list[RegimePeriod] = []
        for name, spans in named.items():
            for start_raw, end_raw in spans:
                start, end = _date(start_raw), _date(end_raw)
                if start is None:
                    raise ValueError(f"{market}/{name}: a period needs a start date")
                if end is not None and end <= start:
                    raise ValueError(f"{market}/{name}: period end {end} is not after its start {start}")
                periods.append(RegimePeriod(name, start, end))
        regimes[market] = periods
    return regimes


def load_regimes(path: Path | None) -> dict[str, list[RegimePeriod]]:
    """Read market_regimes.json (no file configured → no regimes)."""
    if path is None:
        return {}
    return parse_regimes(json.loads(path.read_text()))


# ------------------------------------------------------------------------------------ plans


@dataclass(frozen=True)
class SeriesPlan:
    """The ranges one (market, interval) must have, at one moment."""

    market: str
    timeframe: str
    interval_ms: int
    closed_end: int
    """Open time just past the newest closed candle: nothing at or after it is fetched."""
    primary: tuple[Span, ...]
    """Regime periods, or the global range when the market has no regimes."""
    fallback: Span | None
    """The global range, used when regime periods yield no candle (None without regimes)."""
    live: Span | None
    """The newest ``history_candles`` while following (end date empty, live on)."""

    def targets(self, use_fallback: bool) -> list[Span]:
        """Every span to hold, merged."""
        spans = [*self.primary, *([self.fallback] if use_fallback and self.fallback else [])]
        if self.live:
            spans.append(self.live)
        return union(spans)


def resume_tail(plan: SeriesPlan, covered: Sequence[Span]) -> SeriesPlan:
    """Stretch the live tail back to where the ledger ends, so a long pause leaves no hole.

    Without it the tail would be only the newest ``history_candles``; with it a rerun fetches
    exactly what closed since the previous run. For a market with regimes, a ledger that ends
    inside its historical regime periods is not a previous run's tail and is ignored.
    """
    if plan.live is None or not covered:
        return plan
    newest = max(span.end for span in covered)
    if newest >= plan.live.start:
        return plan
    if plan.fallback is not None:
        historic = [span.end for span in plan.primary if span.end < plan.closed_end]
        if historic and newest <= max(historic):
            return plan
    return replace(plan, live=Span(newest, plan.closed_end))


def plan_series(
    settings: IngestSettings, regimes: dict[str, list[RegimePeriod]], market: str, timeframe: str, now_ms: int
) -> SeriesPlan:
    """Return what (market, timeframe) must hold at ``now_ms`` (exchange time)."""
    interval = timeframe_seconds(timeframe) * 1000
    closed_end = align_down(now_ms, interval)
    history_start = closed_end - settings.history_candles * interval
    start = align_up(to_ms(settings.data_fetch_start_date), interval) if settings.data_fetch_start_date else None
    end = align_up(to_ms(settings.data_fetch_end_date), interval) if settings.data_fetch_end_date else closed_end
    global_span = Span(history_start if start is None else start, min(end, closed_end))
    periods = regimes.get(market, [])
    regime_spans = union(
        Span(align_up(to_ms(p.start), interval), min(closed_end, align_up(to_ms(p.end), interval) if p.end else closed_end))
        for p in periods
    )
    following = settings.live and settings.data_fetch_end_date is None
    return SeriesPlan(
        market=market,
        timeframe=timeframe,
        interval_ms=interval,
        closed_end=closed_end,
        primary=tuple(regime_spans) if periods else ((global_span,) if global_span else ()),
        fallback=(global_span or None) if periods else None,
        live=Span(max(history_start, 0), closed_end) if following and settings.history_candles else None,
    )

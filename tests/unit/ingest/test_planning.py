"""Range arithmetic, market regimes and series plans (pure functions)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from services.ingest.planning import (
    PAGE_CANDLES,
    Span,
    align_down,
    align_up,
    pages,
    parse_regimes,
    plan_series,
    request_count,
    resume_tail,
    subtract,
    union,
)
from services.ingest.settings import IngestSettings

MINUTE, HOUR = 60_000, 3_600_000
NOW = 1_767_225_630_000  # 2026-01-01T00:00:30Z


def ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)


def settings(**values: Any) -> IngestSettings:
    return IngestSettings(_env_file=None, **values)  # type: ignore[call-arg]


def test_union_and_subtract() -> None:
    assert union([Span(5, 9), Span(0, 3), Span(3, 4), Span(8, 12), Span(20, 20)]) == [Span(0, 4), Span(5, 12)]
    assert subtract([Span(0, 100)], [Span(10, 20), Span(15, 30), Span(90, 120)]) == [Span(0, 10), Span(30, 90)]
    assert subtract([Span(0, 10), Span(20, 30)], [Span(0, 30)]) == []
    assert subtract([Span(0, 10)], []) == [Span(0, 10)]


def test_pages_are_newest_first_and_at_most_1440_candles() -> None:
    span = Span(0, 3000 * MINUTE)
    cut = list(pages(span, MINUTE))
    assert cut == [Span(1560 * MINUTE, 3000 * MINUTE), Span(120 * MINUTE, 1560 * MINUTE), Span(0, 120 * MINUTE)]
    assert request_count([span], MINUTE) == math.ceil(3000 / PAGE_CANDLES) == len(cut)
    assert align_down(NOW, MINUTE) == NOW - 30_000 and align_up(NOW, MINUTE) == NOW + 30_000


def test_regimes_accept_pairs_and_mappings_and_refuse_nonsense() -> None:
    regimes = parse_regimes({"BTC-EUR": {"bull": [["2025-01-01", "2025-02-01"]],
                                         "now": [{"start": "2025-12-01T00:00:00Z", "end": ""}]}})
    periods = regimes["BTC-EUR"]
    assert [(p.regime, p.end) for p in periods] == [("bull", datetime(2025, 2, 1, tzinfo=UTC)), ("now", None)]
    with pytest.raises(ValueError, match="not after its start"):
        parse_regimes({"BTC-EUR": {"x": [["2025-02-01", "2025-01-01"]]}})
    with pytest.raises(ValidationError):
        parse_regimes({"BTC-EUR": {"x": "2025-01-01"}})


def test_plan_without_regimes_is_the_global_range_and_the_live_tail() -> None:
    plan = plan_series(settings(history_candles=100), {}, "BTC-EUR", "1m", NOW)
    closed_end = NOW - 30_000
    assert plan.closed_end == closed_end and plan.fallback is None
    assert plan.primary == (Span(closed_end - 100 * MINUTE, closed_end),)
    assert plan.targets(use_fallback=False) == [Span(closed_end - 100 * MINUTE, closed_end)]

    fixed = plan_series(settings(data_fetch_start_date="2025-12-31", data_fetch_end_date="2025-12-31T06:30:00Z"),
                        {}, "BTC-EUR", "1h", NOW)
    assert fixed.live is None and fixed.targets(False) == [Span(ms("2025-12-31"), ms("2025-12-31T07:00"))]


def test_plan_with_regimes_keeps_the_global_range_as_fallback() -> None:
    regimes = parse_regimes({"ETH-EUR": {"a": [["2025-06-01", "2025-06-02"]], "b": [["2025-06-01T12:00", None]]}})
    plan = plan_series(settings(data_fetch_start_date="2025-12-01", live=False), regimes, "ETH-EUR", "1h", NOW)
    assert plan.primary == (Span(ms("2025-06-01"), ms("2026-01-01")),)  # merged, open end = now
    assert plan.fallback == Span(ms("2025-12-01"), ms("2026-01-01"))
    assert plan.targets(use_fallback=True) == [Span(ms("2025-06-01"), ms("2026-01-01"))]


def test_the_live_tail_resumes_where_the_ledger_ends() -> None:
    closed_end = NOW - 30_000
    plan = plan_series(settings(history_candles=100), {}, "BTC-EUR", "1m", NOW)
    paused = [Span(0, closed_end - 5000 * MINUTE)]
    assert resume_tail(plan, paused).live == Span(closed_end - 5000 * MINUTE, closed_end)
    assert resume_tail(plan, [Span(0, closed_end - 50 * MINUTE)]) == plan  # inside the window already
    regimes = parse_regimes({"BTC-EUR": {"old": [["2025-01-01", "2025-02-01"]]}})
    with_regimes = plan_series(settings(history_candles=100), regimes, "BTC-EUR", "1m", NOW)
    assert resume_tail(with_regimes, [Span(ms("2025-01-01"), ms("2025-02-01"))]) == with_regimes

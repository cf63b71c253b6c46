"""``tradeloop sim-exchange`` and ``tradeloop import-candles``.

``sim-exchange`` serves the simulated Bitvavo REST API (the product's offline exchange); point
ingest at it with ``TRADELOOP_SOURCE=bitvavo TRADELOOP_EXCHANGE_URL=<printed URL>
TRADELOOP_CLOCK_SPEED=<--speed>``.

``import-candles`` stores the user's own CSV/Parquet history through ingest's validation (bad
rows go to the candle dead-letter stream), records its gaps and, unless ``--no-publish``,
publishes CandleClosed once per candle.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import sys
import threading
from pathlib import Path
from typing import Any

from services.ingest.exchange.sim_server import SimExchange, add_arguments, config_from_args
from services.ingest.handlers import StoreDeps, announce_window, store_window
from services.ingest.ledger import mark_complete
from services.ingest.metrics import IngestMetrics
from services.ingest.planning import Span, align_down, pages
from services.ingest.sources import read_candle_file
from services.ingest.validation import RawCandle
from shared.broker import make_redis
from shared.cli.commands import open_database
from shared.messages import TIMEFRAMES, timeframe_seconds
from shared.publishing import EventPublisher
from shared.settings import ServiceSettings


def add_parsers(sub: Any) -> None:
    """Add ``sim-exchange`` and ``import-candles`` to the ``tradeloop`` subcommands."""
    sim = sub.add_parser(
        "sim-exchange",
        help="serve a simulated Bitvavo REST API (prints its URL; ingest: TRADELOOP_SOURCE=bitvavo)",
        description="Serve a simulated Bitvavo REST API until Ctrl-C. The first stdout line is the URL "
        "for TRADELOOP_EXCHANGE_URL; give ingest TRADELOOP_CLOCK_SPEED equal to --speed.",
    )
    add_arguments(sim)
    sim.set_defaults(run=sim_exchange)

    imports = sub.add_parser(
        "import-candles", help="store your own CSV/Parquet candle history (validated, gaps recorded)"
    )
    imports.add_argument("path", type=Path, help="CSV or Parquet: timestamp, open, high, low, close, volume")
    imports.add_argument("--market", required=True, help="e.g. BTC-EUR")
    imports.add_argument("--timeframe", required=True, choices=TIMEFRAMES)
    imports.add_argument("--source", default="import", help="recorded as the candles' source")
    imports.add_argument("--no-publish", action="store_true", help="store only; publish no CandleClosed")
    imports.add_argument(
        "--mark-complete", action="store_true", help="record the file's range as fetched (no exchange backfill of it)"
    )
    imports.set_defaults(run=import_candles)


def sim_exchange(settings: ServiceSettings, args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Serve the simulated exchange until interrupted (or ``stop`` is set)."""
    try:
        config = config_from_args(args)
    except ValueError as error:
        sys.stderr.write(f"tradeloop sim-exchange: {error}\n")
        return 2
    with SimExchange(config) as sim:
        sys.stdout.write(sim.base_url + "\n")
        sys.stdout.flush()
        sys.stderr.write(
            f"simulated Bitvavo at {sim.base_url} (markets {','.join(config.markets)}, speed {args.speed:g}x); "
            f"ingest: TRADELOOP_SOURCE=bitvavo TRADELOOP_EXCHANGE_URL={sim.base_url} "
            f"TRADELOOP_CLOCK_SPEED={args.speed:g}\n"
        )
        with contextlib.suppress(KeyboardInterrupt):
            (stop or threading.Event()).wait()
    return 0


def import_candles(settings: ServiceSettings, args: argparse.Namespace) -> int:
    """Import a candle file; print a JSON summary."""
    try:
        frame = read_candle_file(args.path)
    except (OSError, ValueError) as error:
        sys.stderr.write(f"tradeloop import-candles: {error}\n")
        return 2
    candles = [RawCandle(int(row[0]), *map(float, row[1:])) for row in frame.itertuples(index=False)]
    summary = asyncio.run(
        _import(settings, candles, args.market, args.timeframe, args.source, not args.no_publish, args.mark_complete)
    )
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


async def _import(
    settings: ServiceSettings,
    candles: list[RawCandle],
    market: str,
    timeframe: str,
    source: str,
    publish: bool,
    mark: bool,
) -> dict[str, Any]:
    interval = timeframe_seconds(timeframe) * 1000
    summary: dict[str, Any] = {"market": market, "timeframe": timeframe, "rows": len(candles), "rejected": 0,
                               "stored": 0, "published": 0, "gap_intervals": 0}
    if not candles:
        return summary
    candles = sorted(candles, key=lambda c: c.open_time_ms)
    times = [c.open_time_ms for c in candles]
    span = Span(align_down(min(times), interval), align_down(max(times), interval) + interval)
    redis = make_redis(settings.redis_url)
    try:
        async with open_database(settings) as sessions:
            deps = StoreDeps(sessions, EventPublisher(redis), IngestMetrics.create(None))
            done: list[Span] = []
            for window in pages(span, interval, size=5000):
                inside = candles[bisect.bisect_left(times, window.start) : bisect.bisect_left(times, window.end)]
                stored = await store_window(market=market, timeframe=timeframe, window=window, candles=inside,
                                            source=source, deps=deps, known=done)
                done.append(window)
                summary["rejected"] += stored.rejected
                summary["stored"] += stored.stored
                summary["gap_intervals"] += stored.gap_intervals
                if publish:
                    result = await announce_window(stored, deps=deps, complete_until=None)
                    summary["published"] += result.published
            if mark:
                await mark_complete(sessions, market, timeframe, span)
    finally:
        await redis.aclose()
    summary["range"] = [span.start, span.end]
    return summary

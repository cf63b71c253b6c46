"""Prometheus metrics of the ingest service (registered on the service's registry)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

SERIES = ["market", "timeframe"]


@dataclass(frozen=True)
class IngestMetrics:
    """Ingest counters and gauges."""

    stored: Counter
    published: Counter
    rejected: Counter
    newest: Gauge
    gaps: Counter
    lag: Gauge
    exchange_requests: Counter
    ratelimit_remaining: Gauge
    bans: Counter
    outcomes_recorded: Counter
    outcomes_pending: Gauge
    dead_letters: Counter
    fills_imported: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None) -> IngestMetrics:
        """Create the metrics on ``registry`` (None: unregistered, for tests)."""
        return cls(
            stored=Counter("tradeloop_candles_stored", "Candles newly stored.", SERIES, registry=registry),
            published=Counter(
                "tradeloop_candles_published", "CandleClosed events published.", SERIES, registry=registry
            ),
            rejected=Counter(
                "tradeloop_candles_rejected", "Invalid candles refused.", [*SERIES, "reason"], registry=registry
            ),
            newest=Gauge(
                "tradeloop_candle_newest_open_time_seconds",
                "Open time of the newest stored candle (unix seconds).",
                SERIES,
                registry=registry,
            ),
            gaps=Counter(
                "tradeloop_candle_gaps",
                "Intervals recorded as gaps (no trades, hence no candle) between stored candles.",
                SERIES,
                registry=registry,
            ),
            lag=Gauge(
                "tradeloop_ingest_lag_seconds",
                "Exchange time now minus the close time of the newest stored candle.",
                SERIES,
                registry=registry,
            ),
            exchange_requests=Counter(
                "tradeloop_exchange_requests",
                "HTTP requests to the exchange by endpoint and outcome "
                "(ok, banned, server_error, rejected, bad_response).",
                ["endpoint", "status"],
                registry=registry,
            ),
            ratelimit_remaining=Gauge(
                "tradeloop_exchange_ratelimit_remaining",
                "The exchange's bitvavo-ratelimit-remaining header of the latest response.",
                registry=registry,
            ),
            bans=Counter("tradeloop_exchange_bans", "Rate-limit bans received from the exchange.", registry=registry),
            outcomes_recorded=Counter(
                "tradeloop_trade_outcomes_recorded", "Trade outcomes joined into training samples.", registry=registry
            ),
            outcomes_pending=Gauge(
                "tradeloop_trade_events_pending",
                "Trade events waiting for their prediction or their other half.",
                registry=registry,
            ),
            dead_letters=Counter(
                "tradeloop_ingest_dead_letters",
                "Entries ingest wrote to a dead-letter stream (invalid candles, unjoinable trade events).",
                ["stream"],
                registry=registry,
            ),
            fills_imported=Counter(
                "tradeloop_account_fills_imported", "Account fills imported from the exchange.", registry=registry
            ),
        )

    def observe(self, endpoint: str, outcome: str, remaining: int | None) -> None:
        """:class:`~services.ingest.exchange.bitvavo.RequestObserver`: count one exchange request."""
        self.exchange_requests.labels(endpoint, outcome).inc()
        if outcome == "banned":
            self.bans.inc()
            self.ratelimit_remaining.set(0)
        elif remaining is not None:
            self.ratelimit_remaining.set(remaining)

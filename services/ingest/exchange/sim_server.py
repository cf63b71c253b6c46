"""A simulated Bitvavo REST server on loopback, so tradeloop can be tried without API keys.

It serves the paths and response shapes of the real API (``/v2/time``, ``/v2/markets``,
``/v2/{market}/candles``, the signed ``/v2/trades``) with Bitvavo's rate-limit headers, its ban
error (errorCode 105, whose message the SDK parses) and its error dicts.

Prices come from a deterministic, seedable process: time is cut into chunks of
:data:`CHUNK_CANDLES` candles aligned to the Unix epoch, and each chunk is a pure function of
``(seed, market, interval, chunk index)``: a regime-switching random walk (range, trend up/down,
high volatility) bridged between two chunk-level price anchors, with chart patterns (bull flags,
bearish engulfings) planted at positions that :meth:`SimExchange.patterns` reports. A candle at
time ``t`` is therefore the same whichever page or range asks for it. Some candles have no
trades and are left out (gaps, as on the real exchange); planted patterns never have gaps.

Candle query semantics (documented choice): ``start`` is inclusive and ``end`` exclusive by
default (``SimConfig.end_inclusive`` flips ``end`` to inclusive, for clients that must cope with
either); ``start``/``end`` must align with the interval (``require_aligned``), as Bitvavo's docs
demand; only closed candles are served; a request returns the *newest* ``limit`` candles of the
range, newest first. Only the fixed-length intervals of :data:`shared.messages.TIMEFRAMES` are
simulated (not ``1W``/``1M``).

Faults (latency, 5xx, HTML 502, forced bans, truncated pages, duplicated and missing candles) are
set at runtime with :meth:`SimExchange.set_faults` / :meth:`SimExchange.queue_faults` or
``POST /_sim/faults``; which request gets which fault is decided by ``(fault_seed, request index)``
so a sequential client sees the same faults on every run. ``GET /_sim/stats`` and
:meth:`SimExchange.stats` count the requests served.

Run it: ``python -m services.ingest.exchange.sim_server --port 0 --seed 7 --markets BTC-EUR,ETH-EUR``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import random
import re
import sys
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import parse_qs, urlsplit

import numpy as np
import numpy.typing as npt

from shared.messages import TIMEFRAMES, timeframe_seconds

logger = logging.getLogger(__name__)

CHUNK_CANDLES = 4096
"""Candles per generated chunk; chunk ``k`` of an interval starts at ``k * CHUNK_CANDLES * interval``."""
PATTERN_SLOT = 128
"""Each chunk is cut into slots of this many candles; a slot holds at most one planted pattern."""
MAX_CANDLE_LIMIT = 1440
DEFAULT_LISTED_SINCE_MS = 1_546_300_800_000
"""2019-01-01T00:00:00Z: no candles exist before a market's listing."""
BAN_MESSAGE = "Your IP or API key has been banned for not respecting the rate limit. The ban expires at {expiry_ms}."
INVALID_ENDPOINT = "Invalid endpoint. Please check url and HTTP method."
UNKNOWN_ERROR = "Unknown error. Operation may or may not have succeeded."
HTML_502 = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
FAULT_KINDS: tuple[str, ...] = ("latency", "5xx", "html", "ban", "truncate", "duplicate", "missing")
"""Names accepted by :meth:`SimExchange.queue_faults`."""
CANDLE_FAULT_KINDS = frozenset({"truncate", "duplicate", "missing"})

_ENDPOINT_WEIGHT = {"time": 1, "markets": 1, "candles": 1, "trades": 5, "unknown": 1}
_CANDLES_PATH = re.compile(r"^/v2/([A-Za-z0-9]+-[A-Za-z0-9]+)/candles$")
_BASE_PRICES = {"BTC": 60_000.0, "ETH": 3_000.0, "SOL": 150.0, "LTC": 80.0, "XRP": 0.5, "ADA": 0.4, "DOGE": 0.1}
_YEAR_SECONDS = 31_536_000

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class Regime(StrEnum):
    """The market regime a simulated candle was generated in."""

    RANGE = "range"
    TREND_UP = "trend_up"
    TREND_DOWN = "trend_down"
    HIGH_VOLATILITY = "high_volatility"


_REGIMES: tuple[Regime, ...] = tuple(Regime)


class PatternKind(StrEnum):
    """Chart patterns planted in the simulated price series."""

    BULL_FLAG = "bull_flag"
    """A pole of strong up candles, a shallow down-drifting flag, then an up breakout."""
    BEARISH_ENGULFING = "bearish_engulfing"
    """After a small run-up, a bearish candle whose body engulfs the previous bullish body."""


@dataclass(frozen=True)
class _Template:
    steps: tuple[float, ...]
    """Log-price increments in units of the interval's volatility, one per candle."""
    signal_offset: int
    """Index (in ``steps``) of the candle that completes the pattern."""
    volume_boost: tuple[float, ...]


_TEMPLATES: dict[PatternKind, _Template] = {
    PatternKind.BULL_FLAG: _Template(
        steps=(1.8, 1.6, 2.0, 1.7, 1.9, 1.8, -0.5, 0.2, -0.45, 0.15, -0.4, 0.2, -0.3, 1.9, 1.7),
        signal_offset=13,
        volume_boost=(2.0,) * 6 + (0.6,) * 7 + (2.5, 2.0),
    ),
    PatternKind.BEARISH_ENGULFING: _Template(
        steps=(0.6, 0.5, 0.7, 0.6, 1.0, -2.2, -0.8, -0.7),
        signal_offset=5,
        volume_boost=(1.0, 1.0, 1.0, 1.0, 1.2, 2.2, 1.3, 1.1),
    ),
}


@dataclass(frozen=True)
class SimCandle:
    """One candle exactly as the wire carries it (prices and volume are decimal strings)."""

    open_time_ms: int
    open: str
    high: str
    low: str
    close: str
    volume: str

    def as_row(self) -> list[int | str]:
        """Return the candle as a Bitvavo row ``[timestamp, open, high, low, close, volume]``."""
        return [self.open_time_ms, self.open, self.high, self.low, self.close, self.volume]


@dataclass(frozen=True)
class PlantedPattern:
    """Where a chart pattern was planted: open times of its first, last and completing candles."""

    kind: PatternKind
    market: str
    interval: str
    first_open_ms: int
    last_open_ms: int
    signal_open_ms: int

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {**dataclasses.asdict(self), "kind": self.kind.value}


@dataclass(frozen=True)
class SimFill:
    """An account fill served by the signed ``GET /v2/trades`` endpoint."""

    market: str
    side: str
    amount: str
    price: str
    timestamp_ms: int
    fee: str = "0"
    fee_currency: str = "EUR"
    taker: bool = True
    fill_id: str = ""
    order_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Return the fill in Bitvavo's ``/trades`` shape (ids derived from the content when empty)."""
        key = f"{self.market}:{self.side}:{self.amount}:{self.price}:{self.timestamp_ms}"
        return {
            "id": self.fill_id or str(uuid.uuid5(uuid.NAMESPACE_URL, "fill:" + key)),
            "orderId": self.order_id or str(uuid.uuid5(uuid.NAMESPACE_URL, "order:" + key)),
            "clientOrderId": "",
            "timestamp": self.timestamp_ms,
            "market": self.market,
            "side": self.side,
            "amount": self.amount,
            "price": self.price,
            "taker": self.taker,
            "fee": self.fee,
            "feeCurrency": self.fee_currency,
            "settled": True,
        }


@dataclass(frozen=True)
class FaultConfig:
    """Fault rates (each a probability per request) and durations; all off by default."""

    latency_s: float = 0.0
    """Delay added to a request picked by ``latency_rate`` or a queued ``latency`` fault."""
    latency_rate: float = 0.0
    error_5xx_rate: float = 0.0
    """HTTP 500 with ``{"errorCode": 101, ...}`` (Bitvavo's unknown-error body)."""
    html_502_rate: float = 0.0
    """HTTP 502 with an HTML body, as a proxy sends it: not JSON."""
    truncate_rate: float = 0.0
    """Candle pages that return fewer rows than asked although more exist (the oldest are cut)."""
    duplicate_rate: float = 0.0
    """Candle pages that repeat one to three rows."""
    missing_rate: float = 0.0
    """Candle pages that lose one to three rows (never the newest, so a client can notice the hole)."""
    forced_ban_s: float = 1.0
    """Length of the ban that a queued ``ban`` fault imposes."""

    def __post_init__(self) -> None:
        for name in (
            "latency_rate",
            "error_5xx_rate",
            "html_502_rate",
            "truncate_rate",
            "duplicate_rate",
            "missing_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value!r}")
        if self.latency_s < 0 or self.forced_ban_s < 0:
            raise ValueError("latency_s and forced_ban_s must not be negative")


@dataclass(frozen=True)
class SimConfig:
    """Settings of one simulated exchange."""

    markets: tuple[str, ...] = ("BTC-EUR", "ETH-EUR")
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    clock: Callable[[], float] = time.time
    """Returns the simulated "now" in Unix seconds; decides which candles are closed, ``/v2/time``,
    rate-limit windows and bans. Signature timestamps are checked against the wall clock instead,
    because the SDK signs with ``time.time()``."""
    gap_rate: float = 0.002
    """Probability that an interval had no trades, hence no candle."""
    listed_since_ms: int = DEFAULT_LISTED_SINCE_MS
    end_inclusive: bool = False
    require_aligned: bool = True
    limit_clock: Callable[[], float] | None = None
    """Clock of the rate-limit windows and bans (Unix seconds); ``None`` = :attr:`clock`. An
    accelerated :attr:`clock` should keep the limiter on wall time (see :class:`AcceleratedClock`)."""
    rate_limit: int = 1000
    """Weight per window and identity (IP, or API key for signed requests)."""
    rate_window_s: float = 60.0
    ban_s: float = 900.0
    """Ban length after exceeding the limit (Bitvavo bans an IP for 15 minutes)."""
    api_key: str | None = None
    api_secret: str | None = None
    fills: tuple[SimFill, ...] = ()
    faults: FaultConfig = FaultConfig()
    fault_seed: int = 0
    chunk_cache_size: int = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.gap_rate < 1.0:
            raise ValueError("gap_rate must be within [0, 1)")
        if self.rate_limit < 1 or self.rate_window_s <= 0 or self.ban_s < 0:
            raise ValueError("rate_limit and rate_window_s must be positive, ban_s not negative")
        for market in self.markets:
            if not re.fullmatch(r"[A-Z0-9]{1,12}-[A-Z0-9]{1,12}", market):
                raise ValueError(f"bad market {market!r}; expected e.g. BTC-EUR")


class ManualClock:
    """A thread-safe settable clock for :attr:`SimConfig.clock` (Unix seconds)."""

    def __init__(self, start_s: float) -> None:
        self._now = start_s
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` and return the new time."""
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now_s: float) -> None:
        """Set the clock to ``now_s``."""
        with self._lock:
            self._now = now_s


class AcceleratedClock:
    """A virtual clock that starts at ``start_s`` and runs ``speed`` times faster than wall time."""

    def __init__(self, start_s: float, speed: float = 1.0, wall: Callable[[], float] = time.monotonic) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.start_s = start_s
        self.speed = speed
        self._wall = wall
        self._wall_start = wall()

    def __call__(self) -> float:
        return self.start_s + (self._wall() - self._wall_start) * self.speed


# ------------------------------------------------------------------------------------ prices


def _derive_seed(*parts: object) -> int:
    """Return a 64-bit seed that depends only on ``parts`` (stable across processes)."""
    digest = hashlib.blake2b(":".join(str(part) for part in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _candle_sigma(interval_s: int) -> float:
    """Log-return volatility of one candle, for an annual volatility of 60 %."""
    return 0.6 * math.sqrt(interval_s / _YEAR_SECONDS)


@dataclass(frozen=True)
class _MarketSpec:
    base_price: float
    decimals: int
    daily_volume: float
    """Base-asset volume traded per day, on average."""

    @property
    def tick_size(self) -> str:
        return f"{10.0**-self.decimals:.{self.decimals}f}" if self.decimals else "1"


@dataclass(frozen=True)
class _Chunk:
    opens: FloatArray
    highs: FloatArray
    lows: FloatArray
    closes: FloatArray
    volumes: FloatArray
    present: BoolArray
    regimes: npt.NDArray[np.int8]
    patterns: tuple[tuple[PatternKind, int, int, int], ...]
    """(kind, first index, last index, signal index) within the chunk."""


class PriceModel:
    """Deterministic candles per (seed, market, interval, open time), generated chunk by chunk."""

    def __init__(self, seed: int, gap_rate: float, listed_since_ms: int, cache_size: int = 64) -> None:
        self.seed = seed
        self.gap_rate = gap_rate
        self.listed_since_ms = listed_since_ms
        self._cache: OrderedDict[tuple[str, int, int], _Chunk] = OrderedDict()
        self._cache_size = max(1, cache_size)
        self._lock = threading.Lock()

    def market_spec(self, market: str) -> _MarketSpec:
        """Return the base price, price decimals and daily volume of ``market``."""
        base = market.split("-")[0]
        price = _BASE_PRICES.get(base)
        if price is None:
            price = 0.1 * 10 ** (3 * (_derive_seed(self.seed, market, "price") % 10_000) / 10_000)
        decimals = max(0, 4 - math.floor(math.log10(price)))
        return _MarketSpec(base_price=price, decimals=decimals, daily_volume=2_000_000.0 / price)

    def chunk(self, market: str, interval_s: int, index: int) -> _Chunk:
        """Return chunk ``index`` of ``market``/``interval_s`` (cached, LRU)."""
        key = (market, interval_s, index)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        generated = self._generate(market, interval_s, index)
        with self._lock:
            self._cache[key] = generated
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return generated

    def _level(self, market: str, interval_s: int, index: int, amplitude: float, base_price: float) -> float:
        unit = _derive_seed(self.seed, market, interval_s, "level", index) / 2**64 * 2.0 - 1.0
        return math.log(base_price) + amplitude * unit

    def _generate(self, market: str, interval_s: int, index: int) -> _Chunk:
        spec = self.market_spec(market)
        rng = np.random.default_rng(_derive_seed(self.seed, market, interval_s, "chunk", index))
        sigma = _candle_sigma(interval_s)
        size = CHUNK_CANDLES
        amplitude = min(0.6, 0.5 * sigma * math.sqrt(size))
        increments = np.empty(size, dtype=np.float64)
        regimes = np.empty(size, dtype=np.int8)
        volatility = np.ones(size, dtype=np.float64)
        position, deviation = 0, 0.0
        while position < size:
            length = min(int(rng.integers(100, 400)), size - position)
            regime = _pick_regime(rng, deviation, 3.0 * amplitude + 10 * sigma)
            noise = rng.standard_normal(length)
            steps = _regime_steps(regime, noise, sigma)
            increments[position : position + length] = steps
            regimes[position : position + length] = _REGIMES.index(regime)
            if regime is Regime.HIGH_VOLATILITY:
                volatility[position : position + length] = 3.0
            deviation += float(steps.sum())
            position += length

        pattern_mask = np.zeros(size, dtype=np.bool_)
        volume_boost = np.ones(size, dtype=np.float64)
        patterns: list[tuple[PatternKind, int, int, int]] = []
        for slot in range(size // PATTERN_SLOT):
            draw = float(rng.random())
            offset = int(rng.integers(8, PATTERN_SLOT - 24))
            if draw >= 0.6:
                continue
            kind = PatternKind.BULL_FLAG if draw < 0.3 else PatternKind.BEARISH_ENGULFING
            template = _TEMPLATES[kind]
            first = slot * PATTERN_SLOT + offset
            last = first + len(template.steps) - 1
            increments[first : last + 1] = np.asarray(template.steps) * sigma
            volume_boost[first : last + 1] = template.volume_boost
            pattern_mask[first : last + 1] = True
            patterns.append((kind, first, last, first + template.signal_offset))

        start_level = self._level(market, interval_s, index, amplitude, spec.base_price)
        end_level = self._level(market, interval_s, index + 1, amplitude, spec.base_price)
        free = ~pattern_mask
        increments[free] += (end_level - start_level - float(increments.sum())) / int(free.sum())
        log_path = start_level + np.concatenate(([0.0], np.cumsum(increments)))
        opens = np.exp(log_path[:-1])
        closes = np.exp(log_path[1:])
        wick = sigma * volatility * np.where(pattern_mask, 0.3, 0.7)
        highs = np.maximum(opens, closes) * np.exp(np.abs(rng.standard_normal(size)) * wick)
        lows = np.minimum(opens, closes) * np.exp(-np.abs(rng.standard_normal(size)) * wick)
        per_candle = spec.daily_volume * interval_s / 86_400
        volumes = (
            per_candle
            * np.exp(0.35 * rng.standard_normal(size))
            * np.sqrt(volatility)
            * (1.0 + np.abs(increments) / sigma)
            * volume_boost
        )
        protected = pattern_mask.copy()
        protected[1:] |= pattern_mask[:-1]
        protected[:-1] |= pattern_mask[1:]
        present = (rng.random(size) >= self.gap_rate) | protected
        return _Chunk(opens, highs, lows, closes, volumes, present, regimes, tuple(patterns))

    def render(self, market: str, chunk: _Chunk, local: int, open_time_ms: int) -> SimCandle:
        """Format candle ``local`` of ``chunk`` with the market's tick size."""
        decimals = self.market_spec(market).decimals
        return SimCandle(
            open_time_ms=open_time_ms,
            open=f"{chunk.opens[local]:.{decimals}f}",
            high=f"{chunk.highs[local]:.{decimals}f}",
            low=f"{chunk.lows[local]:.{decimals}f}",
            close=f"{chunk.closes[local]:.{decimals}f}",
            volume=f"{chunk.volumes[local]:.8f}",
        )

    def first_index(self, interval_ms: int) -> int:
        """Index of the first candle after listing."""
        return -(-self.listed_since_ms // interval_ms)

    def rows_desc(self, market: str, interval_s: int, low: int, high: int, limit: int) -> list[SimCandle]:
        """Return up to ``limit`` candles with index in ``[low, high]``, newest first, gaps left out."""
        interval_ms = interval_s * 1000
        low = max(low, self.first_index(interval_ms))
        rows: list[SimCandle] = []
        current = high
        while current >= low and len(rows) < limit:
            chunk_index = current // CHUNK_CANDLES
            chunk_start = chunk_index * CHUNK_CANDLES
            chunk = self.chunk(market, interval_s, chunk_index)
            local_low = max(low, chunk_start) - chunk_start
            local_high = current - chunk_start
            present = (np.nonzero(chunk.present[local_low : local_high + 1])[0][::-1] + local_low)[: limit - len(rows)]
            rows += self._render_many(market, chunk, present, chunk_start, interval_ms)
            current = chunk_start + local_low - 1
        return rows

    def _render_many(
        self, market: str, chunk: _Chunk, locals_: npt.NDArray[np.intp], chunk_start: int, interval_ms: int
    ) -> list[SimCandle]:
        """:meth:`render` for many candles of one chunk: the same strings, formatted from Python floats
        taken out of the arrays at once (a numpy scalar formats three times slower)."""
        decimals = self.market_spec(market).decimals
        columns = [values[locals_].tolist() for values in (chunk.opens, chunk.highs, chunk.lows, chunk.closes)]
        price = f"{{:.{decimals}f}}".format
        return [
            SimCandle((chunk_start + local) * interval_ms, price(o), price(h), price(lo), price(c), f"{v:.8f}")
            for local, o, h, lo, c, v in zip(
                locals_.tolist(), *columns, chunk.volumes[locals_].tolist(), strict=True
            )
        ]

    def _indices(self, interval_s: int, start_ms: int, end_ms: int) -> Iterable[tuple[int, int, int]]:
        """Yield (chunk index, local low, local high) covering open times in ``[start_ms, end_ms)``."""
        interval_ms = interval_s * 1000
        low = max(-(-start_ms // interval_ms), self.first_index(interval_ms))
        high = (end_ms - 1) // interval_ms
        current = low
        while current <= high:
            chunk_index = current // CHUNK_CANDLES
            chunk_start = chunk_index * CHUNK_CANDLES
            local_high = min(high, chunk_start + CHUNK_CANDLES - 1) - chunk_start
            yield chunk_index, current - chunk_start, local_high
            current = chunk_start + local_high + 1

    def patterns(self, market: str, interval_s: int, start_ms: int, end_ms: int) -> list[PlantedPattern]:
        """Return the patterns whose candles all open within ``[start_ms, end_ms)``."""
        interval_ms = interval_s * 1000
        found: list[PlantedPattern] = []
        interval = _interval_name(interval_s)
        for chunk_index, local_low, local_high in self._indices(interval_s, start_ms, end_ms):
            base = chunk_index * CHUNK_CANDLES
            for kind, first, last, signal in self.chunk(market, interval_s, chunk_index).patterns:
                if first >= local_low and last <= local_high:
                    found.append(
                        PlantedPattern(
                            kind,
                            market,
                            interval,
                            (base + first) * interval_ms,
                            (base + last) * interval_ms,
                            (base + signal) * interval_ms,
                        )
                    )
        return found

    def gaps(self, market: str, interval_s: int, start_ms: int, end_ms: int) -> list[int]:
        """Return the open times in ``[start_ms, end_ms)`` (after listing) that have no candle."""
        interval_ms = interval_s * 1000
        missing: list[int] = []
        for chunk_index, local_low, local_high in self._indices(interval_s, start_ms, end_ms):
            chunk = self.chunk(market, interval_s, chunk_index)
            holes = np.nonzero(~chunk.present[local_low : local_high + 1])[0] + local_low
            base = chunk_index * CHUNK_CANDLES
            missing.extend(int(base + local) * interval_ms for local in holes)
        return missing

    def regime_at(self, market: str, interval_s: int, open_time_ms: int) -> Regime:
        """Return the regime the candle opening at ``open_time_ms`` was generated in."""
        index = open_time_ms // (interval_s * 1000)
        chunk = self.chunk(market, interval_s, index // CHUNK_CANDLES)
        return _REGIMES[int(chunk.regimes[index % CHUNK_CANDLES])]


def _pick_regime(rng: np.random.Generator, deviation: float, bound: float) -> Regime:
    """Pick the next regime; trends lean against the walk's drift so prices stay in a band."""
    draw = float(rng.random())
    direction = float(rng.random())
    if draw < 0.4:
        return Regime.RANGE
    if draw < 0.8:
        up_probability = 0.5 - max(-0.4, min(0.4, deviation / bound))
        return Regime.TREND_UP if direction < up_probability else Regime.TREND_DOWN
    return Regime.HIGH_VOLATILITY


def _regime_steps(regime: Regime, noise: FloatArray, sigma: float) -> FloatArray:
    """Turn standard-normal ``noise`` into log-price increments for ``regime``."""
    if regime is Regime.TREND_UP:
        return sigma * (0.8 * noise + 0.15)
    if regime is Regime.TREND_DOWN:
        return sigma * (0.8 * noise - 0.15)
    if regime is Regime.HIGH_VOLATILITY:
        return sigma * 3.0 * noise
    level = 0.0
    path = np.empty(len(noise) + 1, dtype=np.float64)
    path[0] = 0.0
    for position, shock in enumerate(noise):
        level = 0.9 * level + sigma * float(shock)
        path[position + 1] = level
    return np.diff(path)


def _interval_name(interval_s: int) -> str:
    for name in TIMEFRAMES:
        if timeframe_seconds(name) == interval_s:
            return name
    raise ValueError(f"no timeframe of {interval_s} s")


# ------------------------------------------------------------------------------------ server


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


class _ApiError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class _Window:
    started_s: float
    used: int = 0
    banned_until_s: float = 0.0


@dataclass(frozen=True)
class _Limit:
    remaining: int
    reset_ms: int
    banned_until_ms: int | None = None


@dataclass(frozen=True)
class _Faults:
    latency: bool = False
    error_5xx: bool = False
    html: bool = False
    ban: bool = False
    truncate: bool = False
    duplicate: bool = False
    missing: bool = False
    rng: random.Random = field(default_factory=random.Random)


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _error(status: int, code: int, message: str) -> _ApiError:
    return _ApiError(status, code, message)


class SimExchange:
    """A simulated Bitvavo REST server; ``start()`` returns its ``RESTURL``."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.prices = PriceModel(
            self.config.seed, self.config.gap_rate, self.config.listed_since_ms, self.config.chunk_cache_size
        )
        self._lock = threading.Lock()
        self._faults = self.config.faults
        self._fault_queue: deque[str] = deque()
        self._global_ban_until_s = 0.0
        self._windows: dict[str, _Window] = {}
        self._request_index = 0
        self._path_counts: Counter[str] = Counter()
        self._status_counts: Counter[int] = Counter()
        self._fault_counts: Counter[str] = Counter()
        self._bans_issued = 0
        self._stopping = threading.Event()
        self._server: _SimHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Start serving on a background thread; return the base URL (``http://127.0.0.1:PORT/v2``)."""
        if self._server is not None:
            raise RuntimeError("the simulated exchange is already running")
        self._stopping.clear()
        server = _SimHTTPServer((self.config.host, self.config.port), self)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="sim-exchange", daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread
        host, port = server.server_address[0], server.server_address[1]
        self._base_url = f"http://{host!s}:{port}/v2"
        return self._base_url

    def stop(self) -> None:
        """Stop serving and close the socket (requests still sleeping in latency faults are woken)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.stopped = True
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The ``RESTURL`` to give the SDK (only while running)."""
        if self._base_url is None or self._server is None:
            raise RuntimeError("the simulated exchange is not running")
        return self._base_url

    # ------------------------------------------------------------------ Python API: data

    def now_ms(self) -> int:
        """Return the simulated time in ms."""
        return int(self.config.clock() * 1000)

    def candles(self, market: str, interval: str, start_ms: int, end_ms: int) -> list[SimCandle]:
        """Return the fault-free closed candles opening in ``[start_ms, end_ms)``, oldest first."""
        interval_s = timeframe_seconds(interval)
        interval_ms = interval_s * 1000
        high = min((end_ms - 1) // interval_ms, self.now_ms() // interval_ms - 1)
        low = -(-start_ms // interval_ms)
        rows = self.prices.rows_desc(market, interval_s, low, high, max(0, high - low + 1))
        return rows[::-1]

    def patterns(self, market: str, interval: str, start_ms: int, end_ms: int) -> list[PlantedPattern]:
        """Return the planted patterns lying wholly in ``[start_ms, end_ms)``, oldest first."""
        return self.prices.patterns(market, timeframe_seconds(interval), start_ms, end_ms)

    def gaps(self, market: str, interval: str, start_ms: int, end_ms: int) -> list[int]:
        """Return the open times in ``[start_ms, end_ms)`` that have no candle (no trades)."""
        return self.prices.gaps(market, timeframe_seconds(interval), start_ms, end_ms)

    def regime_at(self, market: str, interval: str, open_time_ms: int) -> Regime:
        """Return the regime of the candle opening at ``open_time_ms``."""
        return self.prices.regime_at(market, timeframe_seconds(interval), open_time_ms)

    # ------------------------------------------------------------------ Python API: faults, stats

    @property
    def faults(self) -> FaultConfig:
        """The fault rates in force."""
        with self._lock:
            return self._faults

    def set_faults(self, config: FaultConfig | None = None, **changes: Any) -> FaultConfig:
        """Replace the fault config (``config``) and/or change some of its fields; return the result."""
        with self._lock:
            self._faults = dataclasses.replace(config or self._faults, **changes)
            return self._faults

    def queue_faults(self, *kinds: str) -> None:
        """Give the next matching requests these faults, in order (see :data:`FAULT_KINDS`).

        Candle faults wait for the next candles request; the others hit the next ``/v2`` request.
        """
        unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; expected some of {FAULT_KINDS}")
        with self._lock:
            self._fault_queue.extend(kinds)

    def force_ban(self, seconds: float) -> int:
        """Ban every caller for ``seconds``; return the expiry in ms."""
        with self._lock:
            self._global_ban_until_s = self._limit_now() + seconds
            self._bans_issued += 1
            return int(self._global_ban_until_s * 1000)

    def clear_faults(self) -> None:
        """Switch every fault off, empty the queue and lift bans."""
        with self._lock:
            self._faults = FaultConfig()
            self._fault_queue.clear()
            self._global_ban_until_s = 0.0
            self._windows.clear()

    def stats(self) -> dict[str, Any]:
        """Return counters of the ``/v2`` requests served (per path, per status, per fault)."""
        with self._lock:
            return {
                "total_requests": sum(self._path_counts.values()),
                "requests": dict(self._path_counts),
                "statuses": {str(status): count for status, count in self._status_counts.items()},
                "faults": dict(self._fault_counts),
                "bans_issued": self._bans_issued,
            }

    def request_count(self, path: str | None = None) -> int:
        """Return how many requests hit ``path`` (e.g. ``/v2/BTC-EUR/candles``), or all ``/v2`` paths."""
        with self._lock:
            if path is None:
                return sum(self._path_counts.values())
            return self._path_counts[path]

    def reset_stats(self) -> None:
        """Zero every counter."""
        with self._lock:
            self._path_counts.clear()
            self._status_counts.clear()
            self._fault_counts.clear()
            self._bans_issued = 0

    # ------------------------------------------------------------------ request handling

    def _limit_now(self) -> float:
        return (self.config.limit_clock or self.config.clock)()

    def dispatch(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes, client_ip: str
    ) -> _Response:
        """Serve one HTTP request (called by the handler threads); ``headers`` keys are lower case."""
        parts = urlsplit(raw_path)
        if parts.path.startswith("/_sim/"):
            return self._admin(method, parts.path, parts.query, body, client_ip)
        query = {key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
        endpoint, market = self._route(method, parts.path)
        now = self.config.clock()
        limit_now = self._limit_now()
        identity, auth_error = self._authenticate(method, raw_path, headers, body, client_ip)
        if endpoint == "trades" and auth_error is None and not identity.startswith("key:"):
            auth_error = _error(403, 300, "Authentication is required for this endpoint.")
        with self._lock:
            index = self._request_index
            self._request_index += 1
            self._path_counts[parts.path] += 1
            faults = self._decide_faults(index, endpoint == "candles")
            limit = self._charge(identity, _ENDPOINT_WEIGHT[endpoint], limit_now, faults.ban)
        response = self._serve(endpoint, market, query, faults, limit, auth_error, now)
        with self._lock:
            self._status_counts[response.status] += 1
        return response

    def _serve(
        self,
        endpoint: str,
        market: str,
        query: Mapping[str, str],
        faults: _Faults,
        limit: _Limit,
        auth_error: _ApiError | None,
        now: float,
    ) -> _Response:
        rate_headers = {
            "bitvavo-ratelimit-limit": str(self.config.rate_limit),
            "bitvavo-ratelimit-remaining": str(limit.remaining),
            "bitvavo-ratelimit-resetat": str(limit.reset_ms),
        }
        if limit.banned_until_ms is not None:
            message = BAN_MESSAGE.format(expiry_ms=limit.banned_until_ms)
            return _Response(429, _json_bytes({"errorCode": 105, "error": message}), headers=rate_headers)
        if faults.latency:
            self._stopping.wait(self.faults.latency_s)
        if faults.error_5xx:
            return _Response(500, _json_bytes({"errorCode": 101, "error": UNKNOWN_ERROR}), headers=rate_headers)
        if faults.html:
            return _Response(502, HTML_502, content_type="text/html", headers=rate_headers)
        try:
            if auth_error is not None:
                raise auth_error
            payload = self._endpoint(endpoint, market, query, now, faults)
        except _ApiError as error:
            body = _json_bytes({"errorCode": error.code, "error": error.message})
            return _Response(error.status, body, headers=rate_headers)
        return _Response(200, _json_bytes(payload), headers=rate_headers)

    @staticmethod
    def _route(method: str, path: str) -> tuple[str, str]:
        if method != "GET":
            return "unknown", ""
        if path == "/v2/time":
            return "time", ""
        if path == "/v2/markets":
            return "markets", ""
        if path == "/v2/trades":
            return "trades", ""
        match = _CANDLES_PATH.match(path)
        if match:
            return "candles", match.group(1)
        return "unknown", ""

    def _authenticate(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes, client_ip: str
    ) -> tuple[str, _ApiError | None]:
        key = headers.get("bitvavo-access-key")
        if not key:
            return f"ip:{client_ip}", None
        identity = f"ip:{client_ip}"
        if not self.config.api_key or not hmac.compare_digest(key, self.config.api_key):
            return identity, _error(403, 305, "No active API key found.")
        timestamp = headers.get("bitvavo-access-timestamp", "")
        window = headers.get("bitvavo-access-window", "10000")
        if not timestamp.isdigit():
            return identity, _error(403, 302, "Timestamp is invalid. This must be a timestamp in ms.")
        if not window.isdigit() or not 100 <= int(window) <= 60_000:
            return identity, _error(403, 303, "Window must be between 100 and 60000 ms.")
        if abs(time.time() * 1000 - int(timestamp)) > int(window):
            return identity, _error(403, 304, "Request was not received within acceptance window.")
        message = timestamp + method + raw_path
        parsed_body = json.loads(body) if body.strip() else None
        if isinstance(parsed_body, dict) and parsed_body:
            message += json.dumps(parsed_body, separators=(",", ":"))
        secret = (self.config.api_secret or "").encode()
        expected = hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, headers.get("bitvavo-access-signature", "")):
            return identity, _error(403, 309, "The signature is invalid.")
        return f"key:{key}", None

    def _decide_faults(self, index: int, is_candles: bool) -> _Faults:
        """Decide this request's faults from (fault_seed, index) and the queue (lock held)."""
        config = self._faults
        rng = random.Random(f"{self.config.fault_seed}:{index}")
        draws = [rng.random() for _ in range(6)]
        queued = ""
        for position, kind in enumerate(self._fault_queue):
            if kind not in CANDLE_FAULT_KINDS or is_candles:
                queued = kind
                del self._fault_queue[position]
                break
        faults = _Faults(
            latency=queued == "latency" or draws[0] < config.latency_rate,
            error_5xx=queued == "5xx" or draws[1] < config.error_5xx_rate,
            html=queued == "html" or draws[2] < config.html_502_rate,
            ban=queued == "ban",
            truncate=is_candles and (queued == "truncate" or draws[3] < config.truncate_rate),
            duplicate=is_candles and (queued == "duplicate" or draws[4] < config.duplicate_rate),
            missing=is_candles and (queued == "missing" or draws[5] < config.missing_rate),
            rng=rng,
        )
        for name in ("latency", "error_5xx", "html", "ban"):
            if getattr(faults, name):
                self._fault_counts[name] += 1
        return faults

    def _charge(self, identity: str, weight: int, now: float, force_ban: bool) -> _Limit:
        """Count ``weight`` against ``identity``'s window, banning it when over the limit (lock held)."""
        window = self._windows.get(identity)
        banned_until = max(window.banned_until_s if window else 0.0, self._global_ban_until_s)
        if now < banned_until:
            return _Limit(0, int(banned_until * 1000), int(banned_until * 1000))
        ban_s = self._faults.forced_ban_s if force_ban else None
        if window is None or now >= window.started_s + self.config.rate_window_s:
            window = _Window(started_s=now)
            self._windows[identity] = window
        window.used += weight
        if ban_s is None and window.used > self.config.rate_limit:
            ban_s = self.config.ban_s
        if ban_s is not None:
            until = now + ban_s
            self._windows[identity] = _Window(started_s=until, banned_until_s=until)
            self._bans_issued += 1
            return _Limit(0, int(until * 1000), int(until * 1000))
        reset_ms = int((window.started_s + self.config.rate_window_s) * 1000)
        return _Limit(self.config.rate_limit - window.used, reset_ms)

    def _peek_limit(self, identity: str, now: float) -> _Limit:
        with self._lock:
            window = self._windows.get(identity)
            if window is None or now >= window.started_s + self.config.rate_window_s:
                return _Limit(self.config.rate_limit, int((now + self.config.rate_window_s) * 1000))
            remaining = max(0, self.config.rate_limit - window.used)
            return _Limit(remaining, int((window.started_s + self.config.rate_window_s) * 1000))

    # ------------------------------------------------------------------ endpoints

    def _endpoint(self, endpoint: str, market: str, query: Mapping[str, str], now: float, faults: _Faults) -> Any:
        if endpoint == "time":
            self._reject_unknown(query, set())
            now_ns = int(now * 1_000_000_000)
            return {"time": now_ns // 1_000_000, "timeNs": now_ns}
        if endpoint == "markets":
            self._reject_unknown(query, {"market"})
            wanted = query.get("market")
            if wanted is not None and wanted not in self.config.markets:
                raise _error(400, 205, "market parameter is invalid.")
            if wanted is not None:
                return self._market_info(wanted)  # like Bitvavo: one object when a market is named
            return [self._market_info(name) for name in self.config.markets]
        if endpoint == "candles":
            rows = self._candle_rows(market, query, now)
            return [row.as_row() for row in self._page_faults(rows, faults)]
        if endpoint == "trades":
            return self._trades(query)
        raise _error(404, 110, INVALID_ENDPOINT)

    @staticmethod
    def _reject_unknown(query: Mapping[str, str], allowed: set[str]) -> None:
        for name in query:
            if name not in allowed:
                raise _error(400, 204, f"{name} parameter is not supported.")

    def _market_info(self, market: str) -> dict[str, Any]:
        base, quote = market.split("-")
        spec = self.prices.market_spec(market)
        return {
            "market": market,
            "status": "trading",
            "base": base,
            "quote": quote,
            "pricePrecision": None,
            "tickSize": spec.tick_size,
            "minOrderInBaseAsset": f"{5.0 / spec.base_price:.8f}",
            "minOrderInQuoteAsset": "5",
            "maxOrderInBaseAsset": "1000000000",
            "maxOrderInQuoteAsset": "1000000000",
            "quantityDecimals": 8,
            "notionalDecimals": 2,
            "maxOpenOrders": 100,
            "feeCategory": "A",
            "orderTypes": ["market", "limit", "stopLoss", "stopLossLimit", "takeProfit", "takeProfitLimit"],
        }

    @staticmethod
    def _int_param(query: Mapping[str, str], name: str) -> int | None:
        raw = query.get(name)
        if raw is None:
            return None
        if not raw.isdigit():
            raise _error(400, 205, f"{name} parameter is invalid.")
        return int(raw)

    def _candle_rows(self, market: str, query: Mapping[str, str], now: float) -> list[SimCandle]:
        self._reject_unknown(query, {"interval", "limit", "start", "end"})
        if market not in self.config.markets:
            raise _error(400, 205, "market parameter is invalid.")
        interval = query.get("interval")
        if interval is None:
            raise _error(400, 203, "interval parameter is required.")
        if interval not in TIMEFRAMES:
            raise _error(400, 205, "interval parameter is invalid.")
        interval_s = timeframe_seconds(interval)
        interval_ms = interval_s * 1000
        limit = self._int_param(query, "limit")
        if limit is None:
            limit = MAX_CANDLE_LIMIT
        if not 1 <= limit <= MAX_CANDLE_LIMIT:
            raise _error(400, 205, "limit parameter is invalid.")
        start, end = self._int_param(query, "start"), self._int_param(query, "end")
        for name, value in (("start", start), ("end", end)):
            if value is not None and self.config.require_aligned and value % interval_ms:
                raise _error(400, 205, f"{name} parameter is invalid.")
        high = int(now * 1000) // interval_ms - 1
        if end is not None:
            high = min(high, end // interval_ms if self.config.end_inclusive else (end - 1) // interval_ms)
        low = -(-(start or 0) // interval_ms)
        return self.prices.rows_desc(market, interval_s, low, high, limit)

    def _page_faults(self, rows: list[SimCandle], faults: _Faults) -> list[SimCandle]:
        rng = faults.rng
        if faults.truncate and len(rows) >= 2:
            rows = rows[: rng.randint(1, len(rows) - 1)]
            self._count_fault("truncate")
        if faults.missing and len(rows) >= 3:
            drop = set(rng.sample(range(1, len(rows)), k=min(len(rows) - 1, rng.randint(1, 3))))
            rows = [row for position, row in enumerate(rows) if position not in drop]
            self._count_fault("missing")
        if faults.duplicate and rows:
            repeat = set(rng.sample(range(len(rows)), k=min(len(rows), rng.randint(1, 3))))
            rows = [copy for position, row in enumerate(rows) for copy in [row] * (2 if position in repeat else 1)]
            self._count_fault("duplicate")
        return rows

    def _count_fault(self, kind: str) -> None:
        with self._lock:
            self._fault_counts[kind] += 1

    def _trades(self, query: Mapping[str, str]) -> list[dict[str, Any]]:
        self._reject_unknown(query, {"market", "limit", "start", "end", "tradeIdFrom", "tradeIdTo"})
        market = query.get("market")
        if market is None:
            raise _error(400, 203, "market parameter is required.")
        if market not in self.config.markets:
            raise _error(400, 205, "market parameter is invalid.")
        limit = self._int_param(query, "limit") or 500
        if not 1 <= limit <= 1000:
            raise _error(400, 205, "limit parameter is invalid.")
        start = self._int_param(query, "start") or 0
        end = self._int_param(query, "end")
        fills = [
            fill
            for fill in self.config.fills
            if fill.market == market and fill.timestamp_ms >= start and (end is None or fill.timestamp_ms <= end)
        ]
        fills.sort(key=lambda fill: fill.timestamp_ms, reverse=True)
        return [fill.as_dict() for fill in fills[:limit]]

    # ------------------------------------------------------------------ admin endpoints

    def _admin(self, method: str, path: str, raw_query: str, body: bytes, client_ip: str) -> _Response:
        limit = self._peek_limit(f"ip:{client_ip}", self._limit_now())
        headers = {
            "bitvavo-ratelimit-limit": str(self.config.rate_limit),
            "bitvavo-ratelimit-remaining": str(limit.remaining),
            "bitvavo-ratelimit-resetat": str(limit.reset_ms),
        }
        query = {key: values[-1] for key, values in parse_qs(raw_query).items()}
        try:
            payload = self._admin_payload(method, path, query, body)
        except _ApiError as error:
            return _Response(
                error.status, _json_bytes({"errorCode": error.code, "error": error.message}), headers=headers
            )
        except (ValueError, TypeError) as error:
            return _Response(400, _json_bytes({"errorCode": 205, "error": str(error)}), headers=headers)
        return _Response(200, _json_bytes(payload), headers=headers)

    def _admin_payload(self, method: str, path: str, query: Mapping[str, str], body: bytes) -> Any:
        if (method, path) == ("GET", "/_sim/stats"):
            return self.stats()
        if (method, path) == ("POST", "/_sim/stats/reset"):
            self.reset_stats()
            return self.stats()
        if (method, path) == ("GET", "/_sim/faults"):
            return self._fault_state()
        if (method, path) == ("POST", "/_sim/faults"):
            self._apply_fault_request(json.loads(body or b"{}"))
            return self._fault_state()
        if (method, path) == ("GET", "/_sim/patterns"):
            market, interval = query.get("market", ""), query.get("interval", "")
            if market not in self.config.markets or interval not in TIMEFRAMES:
                raise _error(400, 205, "market or interval parameter is invalid.")
            start, end = int(query.get("start", "0")), int(query.get("end", str(self.now_ms())))
            return [pattern.as_dict() for pattern in self.patterns(market, interval, start, end)]
        raise _error(404, 110, INVALID_ENDPOINT)

    def _fault_state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "faults": dataclasses.asdict(self._faults),
                "queue": list(self._fault_queue),
                "ban_until_ms": int(self._global_ban_until_s * 1000),
            }

    def _apply_fault_request(self, request: Any) -> None:
        """Apply ``POST /_sim/faults``: fault fields, ``queue``, ``force_ban_s``, ``reset``."""
        if not isinstance(request, dict):
            raise _error(400, 102, "Your request contains invalid JSON.")
        known = {item.name for item in dataclasses.fields(FaultConfig)} | {"queue", "force_ban_s", "reset"}
        unknown = sorted(set(request) - known)
        if unknown:
            raise _error(400, 204, f"{unknown[0]} parameter is not supported.")
        if request.get("reset"):
            self.clear_faults()
        changes = {key: value for key, value in request.items() if key not in {"queue", "force_ban_s", "reset"}}
        for key, value in changes.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _error(400, 205, f"{key} parameter is invalid.")
        if changes:
            self.set_faults(None, **{key: float(value) for key, value in changes.items()})
        queue = request.get("queue", [])
        if not isinstance(queue, list) or not all(isinstance(kind, str) for kind in queue):
            raise _error(400, 205, "queue parameter is invalid.")
        self.queue_faults(*queue)
        if "force_ban_s" in request:
            self.force_ban(float(request["force_ban_s"]))


class _SimRequestHandler(BaseHTTPRequestHandler):
    server_version = "tradeloop-sim/1"
    protocol_version = "HTTP/1.1"  # keep-alive, like Bitvavo: a client may reuse its connection
    timeout = 30  # idle keep-alive connections are closed after this many seconds

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        server = cast(_SimHTTPServer, self.server)
        if server.stopped:  # a connection kept alive past stop(): hang up, as a dead server would
            self.close_connection = True
            return
        sim = server.sim
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        response = sim.dispatch(method, self.path, headers, body, str(self.client_address[0]))
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("sim exchange: " + format, *args)


class _SimHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sim: SimExchange) -> None:
        self.sim = sim
        self.stopped = False
        super().__init__(address, _SimRequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hung up (timeouts); log anything else."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        logger.exception("sim exchange: error while serving %s", client_address)


# ------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulated exchange's options to ``parser`` (also used by ``tradeloop sim-exchange``)."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markets", default="BTC-EUR,ETH-EUR", help="comma-separated, e.g. BTC-EUR,ETH-EUR")
    parser.add_argument("--gap-rate", type=float, default=0.002)
    parser.add_argument("--rate-limit", type=int, default=1000)
    parser.add_argument("--ban-seconds", type=float, default=900.0)
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--api-secret", default=None)
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="virtual seconds per wall second: 120 closes a 1m candle every 0.5 s (rate limits stay on wall time)",
    )
    parser.add_argument(
        "--start",
        default=None,
        help="virtual time at start, ISO 8601 (default: now); the candle history before it is served at once",
    )


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Build a :class:`SimConfig` from :func:`add_arguments` options."""
    if args.speed <= 0:
        raise ValueError("--speed must be positive")
    start_s = time.time() if args.start is None else _parse_start(args.start)
    accelerated = args.speed != 1.0 or args.start is not None
    return SimConfig(
        markets=tuple(market.strip() for market in args.markets.split(",") if market.strip()),
        seed=args.seed,
        host=args.host,
        port=args.port,
        clock=AcceleratedClock(start_s, args.speed) if accelerated else time.time,
        limit_clock=time.time if accelerated else None,
        gap_rate=args.gap_rate,
        rate_limit=args.rate_limit,
        ban_s=args.ban_seconds,
        fault_seed=args.fault_seed,
        api_key=args.api_key,
        api_secret=args.api_secret,
    )


def _parse_start(value: str) -> float:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def serve_until_stopped(config: SimConfig, *, stop: threading.Event | None = None) -> int:
    """Run the simulated exchange until interrupted (or until ``stop`` is set); print its URL."""
    with SimExchange(config) as sim:
        print(sim.base_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            (stop or threading.Event()).wait()
    return 0


def main(argv: Sequence[str] | None = None, *, stop: threading.Event | None = None) -> int:
    """Run the simulated exchange until interrupted (or until ``stop`` is set); print its URL."""
    parser = argparse.ArgumentParser(
        prog="python -m services.ingest.exchange.sim_server",
        description="Serve a simulated Bitvavo REST API; prints its RESTURL.",
    )
    add_arguments(parser)
    return serve_until_stopped(config_from_args(parser.parse_args(argv)), stop=stop)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

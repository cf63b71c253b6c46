"""Asyncio client for Bitvavo's REST API, built on the official python-bitvavo-api SDK.

The SDK builds and signs the requests; everything around them is ours, because the SDK's own rate
limiting is broken (its ``rateLimitThread`` starts once per instance and its ``waitForReset``
compares seconds with milliseconds, so ``getRemainingLimit()`` can stay at 0 forever). This
client therefore:

* replaces the SDK's ``updateRateLimit`` hook so no SDK thread ever starts, and captures the
  ``bitvavo-ratelimit-*`` headers of each call (per worker thread);
* replaces the SDK's ``publicRequest`` with the same signed GET that parses the JSON body once
  (the SDK parses every body three times: 1440-candle pages make that measurable) and reuses one
  kept-alive ``requests.Session`` per worker thread instead of a new connection per call;
* keeps its own budget: a sliding window of its own request weights (``rate_limit - rate_reserve``
  per ``rate_window_s``) plus the server's ``remaining``/``resetat`` headers;
* treats errorCodes 103, 105, 429 and 110 (the rate-limit page documents 110 on HTTP 429; the old
  error list calls 110 "Invalid endpoint", which is raised instead) as a ban: it waits until the
  expiry parsed from the message (else ``default_ban_wait_s``, 60 s: Bitvavo's key ban), and
  never retries before then;
* retries 5xx-style error codes (101, 107, 108, 109), non-JSON bodies and timeouts with bounded
  exponential backoff, and raises a typed error for anything else.

SDK calls run in worker threads (``asyncio.to_thread``); ``start``/``end`` always travel as ms in
the ``options`` dict (the SDK's datetime kwargs read naive datetimes as local time).

Range semantics: ``start_ms`` inclusive, ``end_ms`` exclusive, whatever the server does with
``end`` (results are filtered). :meth:`BitvavoClient.fetch_range` pages backwards with
``end = oldest open time``; a gap (an interval without trades) is just a missing timestamp.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import requests
from pydantic_core import from_json
from python_bitvavo_api.bitvavo import Bitvavo, createSignature

from services.ingest.validation import RawCandle, validate_candle
from shared.errors import PermanentError, ServiceError, TransientError
from shared.messages import timeframe_seconds

logger = logging.getLogger(__name__)

DEFAULT_REST_URL = "https://api.bitvavo.com/v2"
MAX_CANDLE_LIMIT = 1440
RETRYABLE_ERROR_CODES = frozenset({101, 107, 108, 109})
"""Unknown error / matching engine overloaded / not processed in time / did not respond."""
BAN_ERROR_CODES = frozenset({103, 105, 429})
"""Rate limited / banned. 110 counts too unless its message is "Invalid endpoint ..."."""
RATE_LIMIT_HEADERS = ("bitvavo-ratelimit-remaining", "bitvavo-ratelimit-resetat", "bitvavo-ratelimit-limit")
_BAN_EXPIRY = re.compile(r"\bat (\d{10,})")

__all__ = [
    "BitvavoClient",
    "BitvavoClientConfig",
    "RawCandle",
    "RequestObserver",
    "parse_ban_expiry_ms",
    "parse_candles",
    "validate_candle",
]


class RequestObserver(Protocol):
    """Told about every HTTP attempt the client makes (metrics)."""

    def observe(self, endpoint: str, outcome: str, remaining: int | None) -> None:
        """``outcome``: ok, banned, server_error, rejected or bad_response; ``remaining``: the
        server's ``bitvavo-ratelimit-remaining`` header when the response carried one."""


# ------------------------------------------------------------------------------------ errors


class BitvavoError(ServiceError):
    """Base of this client's errors."""


class BitvavoApiError(BitvavoError, PermanentError):
    """Bitvavo refused the request with an error code that retrying cannot fix."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"Bitvavo error {code}: {message}")
        self.code = code
        self.message = message


class BitvavoUnavailableError(BitvavoError, TransientError):
    """Bitvavo kept failing (5xx, non-JSON, timeouts) after every retry; try again later."""


class BitvavoBannedError(BitvavoError, TransientError):
    """Bitvavo banned this IP/key for longer than the client is allowed to wait."""

    def __init__(self, expiry_ms: int, message: str) -> None:
        super().__init__(message)
        self.expiry_ms = expiry_ms


class BitvavoAuthRequiredError(BitvavoError, PermanentError):
    """The call needs API keys, and none are configured."""


class BitvavoResponseError(BitvavoError, PermanentError):
    """Bitvavo answered with JSON of an unexpected shape."""


# ------------------------------------------------------------------------------------ candles


def interval_ms(interval: str) -> int:
    """Return the length of a Bitvavo interval (``"1h"``) in ms."""
    return timeframe_seconds(interval) * 1000


def parse_candles(rows: Any) -> list[RawCandle]:
    """Parse Bitvavo candle rows (``[ts, "o", "h", "l", "c", "v"]``); order is kept.

    Decimal strings go straight to ``float``: correctly rounded, so the same value as through
    ``Decimal`` (which the result is a float of anyway), at a tenth of the cost.
    """
    if not isinstance(rows, list):
        raise BitvavoResponseError(f"expected a list of candles, got {type(rows).__name__}")
    if all(type(row) is list and len(row) >= 6 for row in rows):  # exactly JSON arrays: the fast path
        try:
            return [RawCandle(int(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5])) for r in rows]
        except (ValueError, TypeError):
            pass  # find the culprit below
    candles: list[RawCandle] = []
    for row in rows:
        if not isinstance(row, list | tuple) or len(row) < 6:
            raise BitvavoResponseError(f"malformed candle row {row!r}")
        try:
            open_time = int(row[0])
            values = [float(value) for value in row[1:6]]
        except (ValueError, TypeError) as error:
            raise BitvavoResponseError(f"malformed candle row {row!r}") from error
        candles.append(RawCandle(open_time, *values))
    return candles


def parse_ban_expiry_ms(message: str) -> int | None:
    """Return the ms timestamp in "... The ban expires at 1700000000000." (``None`` if absent)."""
    match = _BAN_EXPIRY.search(message)
    return int(match.group(1)) if match else None


def _align_up(value_ms: int, step_ms: int) -> int:
    return -(-value_ms // step_ms) * step_ms


def _holes(timestamps: Sequence[int], upper: int | None, step_ms: int) -> list[tuple[int, int]]:
    """Return ``(present, next present)`` pairs further apart than one interval (ascending input)."""
    holes = [(before, after) for before, after in itertools.pairwise(timestamps) if after - before > step_ms]
    if upper is not None and timestamps and upper - timestamps[-1] > step_ms:
        holes.append((timestamps[-1], upper))
    return holes


# ------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class BitvavoClientConfig:
    """Connection, budget and retry settings."""

    rest_url: str = DEFAULT_REST_URL
    api_key: str | None = None
    api_secret: str | None = None
    timeout_s: float = 10.0
    access_window_ms: int = 10_000
    rate_limit: int = 1000
    """Weight per window (Bitvavo: 1000 per minute per IP or API key)."""
    rate_window_s: float = 60.0
    rate_reserve: int = 50
    """Weight left unused per window, as slack for other callers on the same IP/key."""
    reset_margin_s: float = 0.05
    """Extra wait after a reset or ban expiry, for clock skew."""
    max_retries: int = 5
    backoff_base_s: float = 0.25
    backoff_max_s: float = 8.0
    max_ban_wait_s: float = 16 * 60.0
    """Longer bans raise :class:`BitvavoBannedError` instead of sleeping."""
    default_ban_wait_s: float = 60.0
    """Wait used when a ban error carries no expiry and no reset time is known."""
    max_bans: int = 3
    """Bans waited out within one call before it gives up."""
    confirm_gaps: bool = True
    """In :meth:`BitvavoClient.fetch_range`, re-ask once for the span of any hole inside a page (an
    interval without trades stays a hole; a row the server dropped comes back). Costs one request
    per page that has holes."""
    max_gap_checks: int = 4


@dataclass
class ClientCounters:
    """Counters for metrics (a snapshot is returned by :attr:`BitvavoClient.counters`)."""

    requests: int = 0
    retries: int = 0
    bans_waited: int = 0
    rate_limit_waits: int = 0
    duplicates_dropped: int = 0
    gap_checks: int = 0
    candles_recovered: int = 0


# ------------------------------------------------------------------------------------ budget


class RateBudget:
    """Client-side weight budget: a sliding window of our own requests plus the server's headers."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        reserve: int = 0,
        reset_margin_s: float = 0.05,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._limit = limit
        self._window_s = window_s
        self._reserve = reserve
        self._margin_s = reset_margin_s
        self._clock = clock
        self._sleep = sleep
        self._spent: deque[tuple[float, int]] = deque()
        self._server_remaining: int | None = None
        self._server_reset_s = 0.0
        self._blocked_until_s = 0.0
        self._lock = asyncio.Lock()

    @property
    def capacity(self) -> int:
        """Weight this client may spend per window."""
        return max(1, self._limit - self._reserve)

    def spent(self, now: float | None = None) -> int:
        """Weight spent in the last window."""
        now = self._clock() if now is None else now
        while self._spent and self._spent[0][0] <= now - self._window_s:
            self._spent.popleft()
        return sum(weight for _, weight in self._spent)

    def delay(self, weight: int, now: float) -> float:
        """Seconds to wait before ``weight`` may be spent (0 when it may be spent now)."""
        delays = [self._blocked_until_s - now]
        excess = self.spent(now) + weight - self.capacity
        if excess > 0:
            freed = 0
            for spent_at, spent_weight in self._spent:
                freed += spent_weight
                if freed >= excess:
                    delays.append(spent_at + self._window_s - now + self._margin_s)
                    break
        if self._server_remaining is not None:
            if now >= self._server_reset_s:
                self._server_remaining = None
            elif self._server_remaining < weight:
                delays.append(min(self._server_reset_s - now, self._window_s + self._margin_s))
        return max(delays)

    async def acquire(self, weight: int) -> float:
        """Wait until ``weight`` fits the budget, spend it, and return the seconds waited."""
        waited = 0.0
        async with self._lock:
            while True:
                now = self._clock()
                pause = self.delay(weight, now)
                if pause <= 0:
                    self._spent.append((now, weight))
                    if self._server_remaining is not None:
                        self._server_remaining -= weight
                    return waited
                await self._sleep(pause)
                waited += pause

    def observe(self, headers: Mapping[str, str]) -> None:
        """Take in the ``bitvavo-ratelimit-*`` headers of a response.

        The server's ``remaining`` then gates requests until its ``resetat``; the local window keeps
        its configured size (the headers do not say how long the server's window is).
        """
        try:
            remaining = int(headers["bitvavo-ratelimit-remaining"])
            reset_ms = int(headers["bitvavo-ratelimit-resetat"])
        except (KeyError, ValueError):
            return
        self._server_remaining = remaining
        self._server_reset_s = reset_ms / 1000 + self._margin_s

    def block_until(self, until_s: float) -> None:
        """Refuse every request until ``until_s`` (a ban)."""
        self._blocked_until_s = max(self._blocked_until_s, until_s + self._margin_s)


# ------------------------------------------------------------------------------------ SDK glue


class _CapturingBitvavo(Bitvavo):  # type: ignore[misc]  # the SDK is untyped
    """The SDK with its rate-limit thread disabled and each call's rate-limit headers captured."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(dict(options))
        self._captured = threading.local()
        self.rateLimitThread = None  # the SDK starts its thread only when this attribute is absent

    def updateRateLimit(self, response: Any) -> None:
        """Replace the SDK hook: remember the headers (successes) for the calling thread only."""
        headers = {name: str(response[name]) for name in RATE_LIMIT_HEADERS if name in response}
        self._captured.headers = headers
        if "bitvavo-ratelimit-remaining" in headers and "bitvavo-ratelimit-resetat" in headers:
            self.rateLimitRemaining = int(headers["bitvavo-ratelimit-remaining"])
            self.rateLimitReset = int(headers["bitvavo-ratelimit-resetat"])

    def publicRequest(self, url: str) -> Any:
        """The SDK's public GET (signed when keys are set), parsing the JSON body once instead of three times."""
        headers: dict[str, str] = {}
        if self.APIKEY != "":
            now = int(time.time() * 1000)
            signature = createSignature(now, "GET", url.replace(self.base, ""), None, self.APISECRET)
            headers = {
                "bitvavo-access-key": self.APIKEY,
                "bitvavo-access-signature": signature,
                "bitvavo-access-timestamp": str(now),
                "bitvavo-access-window": str(self.ACCESSWINDOW),
            }
        session: requests.Session | None = getattr(self._captured, "session", None)
        if session is None:  # one per worker thread: keeps its connection alive between calls
            session = self._captured.session = requests.Session()
        response = session.get(url, headers=headers, timeout=self.timeout)
        body = from_json(response.content)  # ValueError when the body is not JSON, like response.json()
        self.updateRateLimit(body if isinstance(body, dict) and "error" in body else response.headers)
        return body

    def call(self, method: str, *args: Any) -> tuple[Any, dict[str, str]]:
        """Run SDK ``method`` (in the current thread) and return its result and captured headers."""
        self._captured.headers = {}
        result = getattr(self, method)(*args)
        headers: dict[str, str] = self._captured.headers
        return result, headers


# ------------------------------------------------------------------------------------ client


class BitvavoClient:
    """Asyncio Bitvavo REST client with its own rate limiter, ban handling and retries."""

    def __init__(
        self,
        config: BitvavoClientConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        observer: RequestObserver | None = None,
    ) -> None:
        self.config = config or BitvavoClientConfig()
        self._observer = observer
        options: dict[str, Any] = {
            "RESTURL": self.config.rest_url,
            "TIMEOUT": self.config.timeout_s,
            "ACCESSWINDOW": self.config.access_window_ms,
        }
        if self.config.api_key and self.config.api_secret:
            options |= {"APIKEY": self.config.api_key, "APISECRET": self.config.api_secret}
        self._sdk = _CapturingBitvavo(options)
        self._clock = clock
        self._sleep = sleep
        self._budget = RateBudget(
            self.config.rate_limit,
            self.config.rate_window_s,
            self.config.rate_reserve,
            self.config.reset_margin_s,
            clock,
            sleep,
        )
        self._counters = ClientCounters()

    @property
    def counters(self) -> ClientCounters:
        """A snapshot of the request, retry, ban and gap counters."""
        return dataclasses.replace(self._counters)

    @property
    def budget(self) -> RateBudget:
        """The client-side rate budget."""
        return self._budget

    @property
    def has_credentials(self) -> bool:
        """Whether API keys are configured (needed for :meth:`trades`)."""
        return bool(self.config.api_key and self.config.api_secret)

    # ------------------------------------------------------------------ public API

    async def server_time(self) -> int:
        """Return Bitvavo's clock in ms."""
        result = await self._call(1, "time")
        if not isinstance(result, dict) or "time" not in result:
            raise BitvavoResponseError(f"unexpected /time response {result!r}")
        return int(result["time"])

    async def markets(self, market: str | None = None) -> list[dict[str, Any]]:
        """Return the markets (or the one named), as Bitvavo describes them."""
        result = await self._call(1, "markets", {"market": market} if market else {})
        if isinstance(result, dict):
            result = [result]
        if not isinstance(result, list) or not all(isinstance(item, dict) for item in result):
            raise BitvavoResponseError(f"unexpected /markets response {result!r}")
        return result

    async def trades(
        self, market: str, *, limit: int | None = None, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[dict[str, Any]]:
        """Return this account's fills in ``market``, newest first (needs API keys)."""
        if not self.has_credentials:
            raise BitvavoAuthRequiredError("trades() needs api_key and api_secret")
        options = {
            name: value for name, value in (("limit", limit), ("start", start_ms), ("end", end_ms)) if value is not None
        }
        result = await self._call(5, "trades", market, options)
        if not isinstance(result, list):
            raise BitvavoResponseError(f"unexpected /trades response {result!r}")
        return result

    async def fetch_candles(
        self, market: str, interval: str, start_ms: int | None, end_ms: int | None, limit: int = MAX_CANDLE_LIMIT
    ) -> list[RawCandle]:
        """Make one candles request; return its candles in ``[start_ms, end_ms)``, ascending, deduplicated.

        Bitvavo returns the newest ``limit`` candles of the range. Bounds are rounded up to the
        interval, which keeps the same candles and satisfies the API's alignment rule.
        """
        if not 1 <= limit <= MAX_CANDLE_LIMIT:
            raise ValueError(f"limit must be within 1..{MAX_CANDLE_LIMIT}, got {limit}")
        step = interval_ms(interval)
        options: dict[str, int] = {"limit": limit}
        if start_ms is not None:
            options["start"] = _align_up(start_ms, step)
        if end_ms is not None:
            options["end"] = _align_up(end_ms, step)
            if start_ms is not None and options["start"] >= options["end"]:
                return []
        candles = parse_candles(await self._call(1, "candles", market, interval, options))
        inside = [
            candle for candle in candles
            if (start_ms is None or candle.open_time_ms >= start_ms) and (end_ms is None or candle.open_time_ms < end_ms)
        ]
        if all(a.open_time_ms > b.open_time_ms for a, b in itertools.pairwise(inside)):
            return inside[::-1]  # Bitvavo's order, newest first, without duplicates: just reverse it
        unique: dict[int, RawCandle] = {}
        for candle in inside:
            if candle.open_time_ms in unique:
                self._counters.duplicates_dropped += 1
                continue
            unique[candle.open_time_ms] = candle
        return [unique[open_time] for open_time in sorted(unique)]

    async def fetch_range(
        self, market: str, interval: str, start_ms: int, end_ms: int
    ) -> AsyncIterator[list[RawCandle]]:
        """Yield every candle opening in ``[start_ms, end_ms)``, one page per item, newest page first.

        Each page is ascending and duplicate-free, and pages never overlap. Paging goes backwards
        with ``end = oldest open time`` until a page comes back empty or ``start_ms`` is reached,
        so truncated pages only cost an extra request. Gaps stay gaps: no candle is invented.
        """
        step = interval_ms(interval)
        start, cursor = _align_up(start_ms, step), _align_up(end_ms, step)
        upper: int | None = None
        while cursor > start:
            page = await self.fetch_candles(market, interval, start, cursor)
            if not page:
                return
            if self.config.confirm_gaps:
                rows = {candle.open_time_ms: candle for candle in page}
                await self._fill_holes(market, interval, rows, upper, step)
                page = [rows[open_time] for open_time in sorted(rows)]
            yield page
            upper = cursor = page[0].open_time_ms

    async def collect_range(self, market: str, interval: str, start_ms: int, end_ms: int) -> list[RawCandle]:
        """Return every candle opening in ``[start_ms, end_ms)``, ascending (see :meth:`fetch_range`)."""
        pages = [page async for page in self.fetch_range(market, interval, start_ms, end_ms)]
        return [candle for page in reversed(pages) for candle in page]

    # ------------------------------------------------------------------ internals

    async def _fill_holes(
        self, market: str, interval: str, rows: dict[int, RawCandle], upper: int | None, step: int
    ) -> None:
        """Re-ask for the span of the holes in ``rows``; add what comes back (in place)."""
        pending = _holes(sorted(rows), upper, step)
        for _ in range(self.config.max_gap_checks):
            if not pending:
                return
            first, bound = pending[0][0], pending[-1][1]
            page = await self.fetch_candles(market, interval, first, bound)
            self._counters.gap_checks += 1
            new = [candle for candle in page if candle.open_time_ms not in rows]
            for candle in new:
                rows[candle.open_time_ms] = candle
            self._counters.candles_recovered += len(new)
            covered_from = page[0].open_time_ms if page else bound
            holes = _holes(sorted(rows), upper, step)
            pending = holes if new else [hole for hole in holes if hole[0] < covered_from]
        if pending:
            logger.debug("bitvavo: %d holes in %s %s left unconfirmed", len(pending), market, interval)

    async def _call(self, weight: int, method: str, *args: Any) -> Any:
        """Call SDK ``method`` within the budget; wait out bans, retry transient failures."""
        failures = 0
        bans = 0
        while True:
            if await self._budget.acquire(weight) > 0:
                self._counters.rate_limit_waits += 1
            self._counters.requests += 1
            try:
                result, headers = await asyncio.to_thread(self._sdk.call, method, *args)
            except (requests.RequestException, ValueError) as error:  # timeouts, resets, non-JSON bodies
                failure = f"{type(error).__name__}: {error}"
                self._observe(method, "bad_response", {})
            else:
                self._budget.observe(headers)
                if not (isinstance(result, dict) and "errorCode" in result):
                    self._observe(method, "ok", headers)
                    return result
                code, message = _error_fields(result)
                ban_until_s = self._ban_until(code, message)
                if ban_until_s is not None:
                    self._observe(method, "banned", headers)
                    bans += 1
                    self._wait_for_ban(ban_until_s, bans, code, message)
                    continue
                if code not in RETRYABLE_ERROR_CODES:
                    self._observe(method, "rejected", headers)
                    raise BitvavoApiError(code, message)
                self._observe(method, "server_error", headers)
                failure = f"errorCode {code}: {message}"
            failures += 1
            if failures > self.config.max_retries:
                raise BitvavoUnavailableError(f"Bitvavo {method} failed {failures} times; last: {failure}")
            self._counters.retries += 1
            pause = self._backoff(failures)
            logger.debug("bitvavo %s failed (%s); retry %d in %.2f s", method, failure, failures, pause)
            await self._sleep(pause)

    def _observe(self, method: str, outcome: str, headers: Mapping[str, str]) -> None:
        if self._observer is None:
            return
        try:
            remaining: int | None = int(headers["bitvavo-ratelimit-remaining"])
        except (KeyError, ValueError):
            remaining = None
        self._observer.observe(method, outcome, remaining)

    def _ban_until(self, code: int, message: str) -> float | None:
        """Return when a ban error ends (Unix seconds), or ``None`` if ``code`` is not a ban."""
        if code not in BAN_ERROR_CODES and not (code == 110 and "invalid endpoint" not in message.lower()):
            return None
        expiry_ms = parse_ban_expiry_ms(message)
        if expiry_ms is not None:
            return expiry_ms / 1000
        return self._clock() + self.config.default_ban_wait_s

    def _wait_for_ban(self, until_s: float, bans: int, code: int, message: str) -> None:
        """Block the budget until the ban ends, or raise if it is too long or keeps coming back."""
        wait_s = until_s - self._clock()
        if wait_s > self.config.max_ban_wait_s or bans > self.config.max_bans:
            raise BitvavoBannedError(int(until_s * 1000), f"Bitvavo ban (errorCode {code}): {message}")
        self._counters.bans_waited += 1
        logger.warning("bitvavo: banned (errorCode %d); waiting %.1f s", code, max(0.0, wait_s))
        self._budget.block_until(until_s)

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2.0 ** (failures - 1))
        return ceiling * random.uniform(0.5, 1.0)


def _error_fields(result: Mapping[str, Any]) -> tuple[int, str]:
    try:
        code = int(result["errorCode"])
    except (TypeError, ValueError):
        code = -1
    return code, str(result.get("error", ""))

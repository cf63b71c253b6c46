"""One structured log format for every service: text by default, JSON lines with TRADELOOP_LOG_JSON=1.

Correlation: :func:`bind` attaches fields (``event_id``, ``command_event_id``, ``run_id``,
``prediction_id``, …) to every record logged in the current context (asyncio task and the tasks it
creates), so all lines about one message or run can be found with one grep / one JSON filter.
Fields passed with ``extra=`` win over bound ones. :class:`CorrelationMiddleware` binds the ids of
each consumed message for the duration of its handler (installed by ``shared.observability``).

``TRADELOOP_LOG_FILE`` adds a rotating log file (10 MB x 5 backups); ``{service}`` in the path is
replaced by the service name, so processes sharing a configuration do not share a file.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.handlers
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from faststream import BaseMiddleware, StreamMessage

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "color_message", "taskName"}

CORRELATION_FIELDS: tuple[str, ...] = ("event_id", "command_event_id", "run_id", "prediction_id")
"""The ids that tie log lines to messages, commands, retrain runs and predictions, spelled the same everywhere."""

FASTSTREAM_LOGGERS = ("faststream", "faststream.access.redis")
LOG_FILE_MAX_BYTES = 10_000_000
LOG_FILE_BACKUPS = 5

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_bound: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("tradeloop_log_fields", default=_EMPTY)


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, uuid.UUID) else value


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every record logged inside the ``with`` block (None values are skipped)."""
    token = _bound.set(MappingProxyType({**_bound.get(), **{k: _plain(v) for k, v in fields.items() if v is not None}}))
    try:
        yield
    finally:
        _bound.reset(token)


def bound_fields() -> dict[str, Any]:
    """The fields bound in the current context."""
    return dict(_bound.get())


class ContextFilter(logging.Filter):
    """Copy the bound fields onto each record (without overriding ``extra=`` fields)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _bound.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def correlation_fields(body: bytes | str) -> dict[str, str]:
    """The correlation ids found at the top level of a JSON message body (empty when it is not JSON)."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    if not text.lstrip().startswith("{"):
        return {}
    try:
        payload = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(payload, dict):
        return {}
    return {name: str(payload[name]) for name in CORRELATION_FIELDS if payload.get(name) is not None}


class CorrelationMiddleware(BaseMiddleware):
    """FastStream middleware: bind the consumed message's ids (and its stream) while it is handled."""

    async def consume_scope(
        self, call_next: Callable[[StreamMessage[Any]], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        fields: dict[str, Any] = correlation_fields(msg.body) if isinstance(msg.body, bytes | str) else {}
        raw = msg.raw_message
        if isinstance(raw, dict) and raw.get("channel"):
            channel = raw["channel"]
            fields["stream"] = channel.decode() if isinstance(channel, bytes) else str(channel)
        with bind(**fields):
            return await call_next(msg)


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object; ``extra=`` and bound fields (event_id, slot, …) become keys."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    """``time level service logger: message key=value …``."""

    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s %(levelname)s " + service + " %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        return f"{base} {extras}" if extras else base


def log_file_path(file: Path | str, service: str) -> Path:
    """``file`` with ``{service}`` replaced by the service name."""
    return Path(str(file).replace("{service}", service))


def setup_logging(service: str, level: str = "INFO", json_lines: bool = False, file: Path | None = None) -> None:
    """Configure the root logger once per process (optionally also a rotating log file)."""
    formatter: logging.Formatter = JsonFormatter(service) if json_lines else TextFormatter(service)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file is not None:
        path = log_file_path(file, service)
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                path, maxBytes=LOG_FILE_MAX_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8"
            )
        )
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, logging.FileHandler):
            old.close()
    root.handlers.clear()
    context = ContextFilter()
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(context)
        handler.setLevel(level.upper())
        root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "httpx", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # FastStream's app and broker loggers do not propagate and bring coloured handlers; give them
    # ours. FastStream only adds its handler to a logger without one writing to stdout.
    stdout = logging.StreamHandler(sys.stdout)
    stdout.setFormatter(formatter)
    stdout.addFilter(context)
    stdout.setLevel(level.upper())
    for name in FASTSTREAM_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        for handler in (stdout, *handlers[1:]):
            logger.addHandler(handler)
        logger.propagate = False

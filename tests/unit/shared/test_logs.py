"""Structured logs: bound correlation fields, the consuming middleware, the rotating log file."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from faststream.redis import RedisBroker, RedisRouter, StreamSub, TestRedisBroker

from shared.logs import (
    FASTSTREAM_LOGGERS,
    ContextFilter,
    CorrelationMiddleware,
    JsonFormatter,
    TextFormatter,
    bind,
    bound_fields,
    correlation_fields,
    log_file_path,
    setup_logging,
)
from shared.settings import ServiceSettings


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, Capture]]:
    logger = logging.getLogger(f"test.logs.{uuid.uuid4().hex}")
    handler = Capture()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, handler
    logger.removeHandler(handler)


def test_bind_adds_fields_inside_the_block_only(captured: tuple[logging.Logger, Capture]) -> None:
    logger, handler = captured
    event_id = uuid.uuid4()
    with bind(event_id=event_id, run_id=None):
        with bind(run_id="r-1"):
            logger.info("inner")
            assert bound_fields() == {"event_id": str(event_id), "run_id": "r-1"}
        logger.info("outer", extra={"event_id": "explicit"})
    logger.info("after")
    inner, outer, after = handler.records
    assert (vars(inner)["event_id"], vars(inner)["run_id"]) == (str(event_id), "r-1")
    assert vars(outer)["event_id"] == "explicit" and "run_id" not in vars(outer)  # extra= wins
    assert "event_id" not in vars(after)


@pytest.mark.asyncio(loop_scope="session")
async def test_bound_fields_follow_tasks(captured: tuple[logging.Logger, Capture]) -> None:
    logger, handler = captured

    async def work(prediction: str) -> None:
        with bind(prediction_id=prediction):
            await asyncio.sleep(0)
            logger.info("predicted")

    with bind(event_id="e-1"):
        await asyncio.gather(work("p-1"), work("p-2"))
    assert sorted((vars(r)["event_id"], vars(r)["prediction_id"]) for r in handler.records) == [
        ("e-1", "p-1"), ("e-1", "p-2")]


def test_correlation_fields_of_a_message_body() -> None:
    body = json.dumps({"event_id": "e", "command_event_id": "c", "run_id": None, "slot": {"market": "x"}})
    assert correlation_fields(body.encode()) == {"event_id": "e", "command_event_id": "c"}
    assert correlation_fields(b"not json") == {}
    assert correlation_fields(b"{broken") == {}
    assert correlation_fields("[1, 2]") == {}


@pytest.mark.asyncio(loop_scope="session")
async def test_the_middleware_binds_the_consumed_message(captured: tuple[logging.Logger, Capture]) -> None:
    logger, handler = captured
    broker = RedisBroker()
    router = RedisRouter()

    @router.subscriber(stream=StreamSub("tradeloop.test.logs", group="g", consumer="c"))
    async def handle(body: dict[str, object]) -> None:
        logger.info("handled %s", body["n"])

    broker.include_router(router)
    broker.insert_middleware(CorrelationMiddleware)  # after the routes, as shared.observability does
    async with TestRedisBroker(broker) as test_broker:
        await test_broker.publish({"event_id": "e-9", "run_id": "r-9", "n": 1}, stream="tradeloop.test.logs")
    (record,) = handler.records
    fields = vars(record)
    assert (fields["event_id"], fields["run_id"], fields["stream"]) == ("e-9", "r-9", "tradeloop.test.logs")
    assert bound_fields() == {}


def test_json_and_text_formatters_show_bound_fields() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    with bind(event_id="e-2"):
        ContextFilter().filter(record)
    payload = json.loads(JsonFormatter("registry").format(record))
    assert payload["service"] == "registry" and payload["message"] == "hello you" and payload["event_id"] == "e-2"
    assert TextFormatter("registry").format(record).endswith("hello you event_id=e-2")


def test_log_file_setting_and_placeholder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRADELOOP_LOG_FILE", str(tmp_path / "{service}.log"))
    settings = ServiceSettings()
    assert settings.log_file is not None
    assert log_file_path(settings.log_file, "trainer") == tmp_path / "trainer.log"


def test_setup_logging_writes_the_rotating_file(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    faststream = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate,
                         logging.getLogger(name).level) for name in FASTSTREAM_LOGGERS}
    try:
        setup_logging("ingest", "INFO", json_lines=True, file=tmp_path / "logs" / "{service}-pipeline_run.log")
        with bind(command_event_id="c-1"):
            logging.getLogger("tradeloop.test").info("to the file")
        for handler in root.handlers:
            handler.flush()
        lines = (tmp_path / "logs" / "ingest-pipeline_run.log").read_text().splitlines()
        assert json.loads(lines[-1])["command_event_id"] == "c-1"
        rotating = [h for h in root.handlers if isinstance(h, logging.handlers.RotatingFileHandler)]
        assert rotating and rotating[0].maxBytes > 0 and rotating[0].backupCount > 0
        broker_logger = logging.getLogger("faststream.access.redis")
        assert rotating[0] in broker_logger.handlers  # FastStream's lines: same format, same file
        broker_logger.setLevel(logging.DEBUG)  # as make_broker's log_level does
        broker_logger.debug("per-message access line")  # below the configured level: dropped
        broker_logger.info("broker line")
        for handler in root.handlers:
            handler.flush()
        lines = (tmp_path / "logs" / "ingest-pipeline_run.log").read_text().splitlines()
        assert json.loads(lines[-1])["message"] == "broker line" and "per-message" not in lines[-2]
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, (handlers, propagate, level) in faststream.items():
            logging.getLogger(name).handlers[:] = handlers
            logging.getLogger(name).propagate = propagate
            logging.getLogger(name).setLevel(level)

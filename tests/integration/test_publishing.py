"""publish_once on a real Redis: one script call per batch, same keys, TTL and once-per-key semantics."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from shared.broker import Redis
from shared.messages import ActivateModel, RetrainModel, Slot
from shared.publishing import ONCE_BATCH, ONCE_TTL_SECONDS, EventPublisher, OnceEntry
from shared.streams import Stream

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


class CommandLog:
    """Records the command names a client sends (pipelines included)."""

    def __init__(self, redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        original = redis.execute_command

        async def execute_command(*args: Any, **options: Any) -> Any:
            self.names.append(str(args[0]).upper())
            return await original(*args, **options)

        monkeypatch.setattr(redis, "execute_command", execute_command)
        original_pipeline = redis.pipeline

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            self.names.append("PIPELINE")
            return original_pipeline(*args, **kwargs)

        monkeypatch.setattr(redis, "pipeline", pipeline)


async def _entries(redis: Redis, stream: Stream) -> list[dict[str, Any]]:
    return [json.loads(fields[b"__data__"]) for _id, fields in await redis.xrange(stream.value)]


async def test_a_batch_is_one_evalsha_without_script_exists(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    publisher = EventPublisher(redis)
    await publisher.publish_once([("warm", ActivateModel(version_id="warm"))])  # the script is loaded now
    log = CommandLog(redis, monkeypatch)
    messages = [(f"batch-{n}", ActivateModel(version_id=f"v{n}")) for n in range(20)]
    assert await publisher.publish_once(messages) == 20
    assert log.names == ["EVALSHA"]


async def test_keys_ttl_values_and_order_are_kept(redis: Redis) -> None:
    publisher = EventPublisher(redis)
    messages = [(f"order-{n}", ActivateModel(version_id=f"v{n}")) for n in range(5)]
    assert await publisher.publish_once(messages) == 5
    for key, message in messages:
        assert await redis.get(f"tradeloop:once:{key}") == str(message.event_id).encode()
        ttl = await redis.ttl(f"tradeloop:once:{key}")
        assert ONCE_TTL_SECONDS - 5 <= ttl <= ONCE_TTL_SECONDS
    assert [e["version_id"] for e in await _entries(redis, Stream.ACTIVATE_MODEL)] == [f"v{n}" for n in range(5)]


async def test_duplicates_within_a_batch_and_across_calls_are_skipped(redis: Redis) -> None:
    publisher = EventPublisher(redis)
    first = ActivateModel(version_id="first")
    assert await publisher.publish_once([("dup", first), ("dup", ActivateModel(version_id="second"))]) == 1
    assert await publisher.publish_once([("dup", ActivateModel(version_id="third")),
                                         ("fresh", ActivateModel(version_id="fresh"))]) == 1
    assert [e["version_id"] for e in await _entries(redis, Stream.ACTIVATE_MODEL)] == ["first", "fresh"]
    assert await redis.get("tradeloop:once:dup") == str(first.event_id).encode()
    assert publisher.duplicates.labels(Stream.ACTIVATE_MODEL.value)._value.get() == 2
    assert publisher.published.labels(Stream.ACTIVATE_MODEL.value)._value.get() == 2


async def test_the_skipped_series_exists_at_zero_from_a_streams_first_publication(redis: Redis) -> None:
    registry = CollectorRegistry()
    publisher = EventPublisher(redis, registry)
    await publisher.publish_once([("only", ActivateModel(version_id="only"))])
    await publisher.publish_stream_once(Stream.CANDLE_CLOSED.value, [("c1", str(uuid.uuid4()), "{}")])
    for stream in (Stream.ACTIVATE_MODEL.value, Stream.CANDLE_CLOSED.value):
        labels = {"stream": stream}
        assert registry.get_sample_value("tradeloop_publish_duplicates_skipped_total", labels) == 0
        assert registry.get_sample_value("tradeloop_messages_published_total", labels) == 1


async def test_one_call_can_mix_streams(redis: Redis) -> None:
    publisher = EventPublisher(redis)
    slot = Slot(market="BTC-EUR", timeframe="1m")
    messages = [("mix-a", ActivateModel(version_id="a")), ("mix-r", RetrainModel(slot=slot, requested_by="t")),
                ("mix-b", ActivateModel(version_id="b"))]
    assert await publisher.publish_once(messages) == 3
    assert [e["version_id"] for e in await _entries(redis, Stream.ACTIVATE_MODEL)] == ["a", "b"]
    assert len(await _entries(redis, Stream.RETRAIN_MODEL)) == 1


async def test_raw_entries_are_chunked_and_flagged_per_entry(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    publisher = EventPublisher(redis)
    stream = Stream.CANDLE_CLOSED.value
    await redis.set("tradeloop:once:raw-7", "earlier")
    entries = [OnceEntry(f"raw-{n}", stream, f"e{n}", json.dumps({"n": n})) for n in range(ONCE_BATCH + 3)]
    log = CommandLog(redis, monkeypatch)
    flags = await publisher.publish_once_raw(entries)
    assert log.names.count("EVALSHA") == 2 and "PIPELINE" not in log.names
    assert flags == [n != 7 for n in range(ONCE_BATCH + 3)]
    assert [e["n"] for e in await _entries(redis, Stream.CANDLE_CLOSED)] == [n for n in range(ONCE_BATCH + 3) if n != 7]
    assert await redis.get("tradeloop:once:raw-7") == b"earlier"


async def test_an_unknown_script_is_loaded_once_then_used(redis: Redis) -> None:
    publisher = EventPublisher(redis)
    publisher._once.sha = "0" * 40  # what Redis answers after SCRIPT FLUSH or a restart: NOSCRIPT
    assert await publisher.publish_once([("noscript", ActivateModel(version_id="n"))]) == 1
    assert publisher._once.sha != "0" * 40
    assert await publisher.publish_once([("noscript", ActivateModel(version_id="again"))]) == 0


async def test_an_empty_batch_sends_nothing(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    publisher = EventPublisher(redis)
    log = CommandLog(redis, monkeypatch)
    assert await publisher.publish_once([]) == 0
    assert await publisher.publish_once_raw([]) == []
    assert log.names == []


async def test_a_page_of_one_stream_is_published_once_per_key(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    publisher = EventPublisher(redis)
    stream = Stream.CANDLE_CLOSED.value
    await redis.set("tradeloop:once:page-3", "earlier")
    events = [(f"page-{n}", f"e{n}", json.dumps({"n": n})) for n in range(1440)]
    await publisher.publish_stream_once(stream, events[:1])  # loads the script
    log = CommandLog(redis, monkeypatch)
    assert await publisher.publish_stream_once(stream, events) == 1440 - 2  # page-0 was published, page-3 marked
    assert log.names == ["EVALSHA"] * 3  # 1440 entries in chunks of ONCE_BATCH
    assert [e["n"] for e in await _entries(redis, Stream.CANDLE_CLOSED)] == [0] + [n for n in range(1, 1440) if n != 3]
    assert await redis.get("tradeloop:once:page-9") == b"e9"
    assert publisher.duplicates.labels(stream)._value.get() == 2


async def test_a_payload_with_a_newline_is_refused_before_anything_is_sent(redis: Redis) -> None:
    publisher = EventPublisher(redis)
    with pytest.raises(ValueError, match="newline"):
        await publisher.publish_stream_once(Stream.CANDLE_CLOSED.value, [("nl-1", "e1", '{"a":\n1}')])
    with pytest.raises(ValueError, match="newline"):
        await publisher.publish_once_raw([OnceEntry("nl-2", Stream.CANDLE_CLOSED.value, "e\n2", "{}")])
    assert await redis.exists("tradeloop:once:nl-1", "tradeloop:once:nl-2") == 0

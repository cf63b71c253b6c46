"""Contracts: slots, timestamps, streams and the plain-JSON wire format."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from shared.messages import (
    STREAM_MESSAGES,
    ActivateModel,
    CandleClosed,
    Family,
    Message,
    RetrainModel,
    Slot,
    stream_of,
    timeframe_seconds,
)
from shared.streams import WORK_GROUPS, Stream, dead_letter_stream


def test_slot_key_round_trips_with_and_without_pattern() -> None:
    plain = Slot(family=Family.XGBOOST, market="BTC-EUR", timeframe="1h")
    patterned = Slot(family=Family.CNN, market="ETH-EUR", timeframe="4h", pattern="bullFlag")
    assert plain.key == "xgboost:BTC-EUR:1h"
    assert Slot.from_key(plain.key) == plain
    assert Slot.from_key(patterned.key) == patterned


@pytest.mark.parametrize("bad", [{"market": "btc", "timeframe": "1h"}, {"market": "BTC-EUR", "timeframe": "7m"}])
def test_slot_refuses_bad_market_or_timeframe(bad: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        Slot(**bad)


def test_naive_timestamps_are_refused_and_aware_ones_normalised_to_utc() -> None:
    fields = {"market": "BTC-EUR", "timeframe": "1m", "open": 1, "high": 2, "low": 0.5, "close": 1.5, "volume": 3}
    with pytest.raises(ValidationError):
        CandleClosed(open_time=datetime(2026, 1, 1), **fields)
    candle = CandleClosed(open_time=datetime.fromisoformat("2026-01-01T01:00:00+01:00"), **fields)
    assert candle.open_time == datetime(2026, 1, 1, tzinfo=UTC)
    assert candle.occurred_at.tzinfo is not None


def test_every_stream_has_one_message_type_and_back() -> None:
    for stream, message_type in STREAM_MESSAGES.items():
        assert stream_of(message_type) is stream
    assert set(WORK_GROUPS) <= set(STREAM_MESSAGES)
    assert Stream.RETRAIN_MODEL.dlq == dead_letter_stream(Stream.RETRAIN_MODEL.value) == "tradeloop.cmd.retrain-model.dlq"


def test_commands_are_orders_and_events_past_tense() -> None:
    commands = {s for s in Stream if ".cmd." in s.value}
    assert {STREAM_MESSAGES[s].__name__ for s in commands} == {
        "RetrainModel", "ActivateModel", "RollbackModel", "AddChallenger", "RemoveChallenger", "ArchiveModel"}
    for stream in set(Stream) - commands:
        name = STREAM_MESSAGES[stream].__name__
        assert name.endswith(("ed", "Made", "Progress")), name
        assert name not in {"AddChallenger", "RemoveChallenger", "ActivateModel", "RetrainModel"}, name


def test_a_redis_cli_payload_parses_with_defaults() -> None:
    """Given the minimal JSON a README reader XADDs, when parsed, then envelope fields are filled."""
    command = RetrainModel.model_validate_json(
        json.dumps({"slot": {"market": "BTC-EUR", "timeframe": "1m"}, "requested_by": "redis-cli"})
    )
    assert command.slot.family is Family.XGBOOST
    assert command.schema_version == 1
    activation = ActivateModel.model_validate_json('{"version_id": "v20260101_000000"}')
    assert isinstance(activation, Message)


def test_unknown_fields_are_ignored_for_rolling_deploys() -> None:
    command = ActivateModel.model_validate({"version_id": "v1", "added_in_a_later_release": 1})
    assert command.version_id == "v1"


def test_timeframe_seconds() -> None:
    assert timeframe_seconds("1m") == 60
    assert timeframe_seconds("4h") == 14_400
    assert timeframe_seconds("1d") == 86_400
    with pytest.raises(ValueError, match="unknown timeframe"):
        timeframe_seconds("3m")

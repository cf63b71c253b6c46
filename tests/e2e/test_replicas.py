"""End to end: two inference replicas as processes follow a rollback made through the admin HTTP API, and a
replayed (stale) activation event changes neither, while candles flow through both.

"Rollback restores the previous champion everywhere": in the registry's state and history, and in every
replica, each of which says so itself (its ModelSwapped, its own /metrics), with predictions by the restored
version only from then on and no candle left without a prediction.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.broker import make_redis
from shared.cli.demo import LoopReport, ServiceHook
from shared.cli.processes import ServiceGroup
from shared.db.models import ActivationHistory, Prediction, SlotChampion
from shared.messages import Family, Message, ModelActivated, ModelSwapped, Slot
from shared.streams import Stream
from shared.waiting import decode_entry, tail_ids, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

SLOT = Slot(family=Family.XGBOOST, market="BTC-EUR", timeframe="1m")

REPLICAS = ("inference", "inference-2")


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""A replica's /metrics: (sample name, sorted labels) → value."""


async def metrics_of(client: httpx.AsyncClient, base_url: str) -> Samples:
    """One replica's samples: (name, sorted labels) → value."""
    text = (await client.get(f"{base_url}/metrics")).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def predictions_by(samples: Samples, version: str) -> float:
    return sum(v for (name, labels), v in samples.items()
               if name == "tradeloop_predictions_total" and ("version", version) in labels)


def served(samples: Samples, version: str) -> float:
    return samples.get(("tradeloop_served_champion", (("slot", SLOT.key), ("version", version))), 0.0)


async def swapped_everywhere(redis: Any, replicas: set[str], version: str, epoch: int,
                             after: dict[str, str]) -> dict[str, ModelSwapped]:
    """The ModelSwapped of each replica for ``version`` at ``epoch`` (waiting up to 60 s for all of them)."""
    seen: dict[str, ModelSwapped] = {}

    def match(message: Message) -> bool:
        if isinstance(message, ModelSwapped) and message.version_id == version and message.epoch == epoch:
            seen[message.replica] = message
        return set(seen) >= replicas

    await wait_for(redis, [Stream.MODEL_SWAPPED], match, after=after, timeout=60.0)
    return seen


async def activated_at(redis: Any, *, epoch: int) -> tuple[ModelActivated, dict[Any, Any]]:
    """The registry's ModelActivated at ``epoch`` and its entry's fields as they are on the stream."""
    for _entry, fields in await redis.xrange(Stream.MODEL_ACTIVATED.value):
        event = decode_entry(Stream.MODEL_ACTIVATED, fields)
        if isinstance(event, ModelActivated) and event.epoch == epoch:
            return event, fields
    raise AssertionError(f"no ModelActivated at epoch {epoch}")


async def all_swaps(redis: Any) -> list[ModelSwapped]:
    """Every ModelSwapped on the stream, oldest first."""
    entries = await redis.xrange(Stream.MODEL_SWAPPED.value)
    return [m for _e, f in entries if isinstance(m := decode_entry(Stream.MODEL_SWAPPED, f), ModelSwapped)]


async def test_two_replicas_follow_a_rollback_and_ignore_a_replayed_activation(
    redis_url: str, clean_database: async_sessionmaker[AsyncSession], short_loop: Callable[[ServiceHook], Awaitable[LoopReport]]
) -> None:
    """Given the four services plus a second inference replica and two activated versions (epochs 1, 2),
    when POST /ai/rollback is sent and then the epoch-2 ModelActivated is replayed onto the stream, then both
    replicas serve the first version again at epoch 3 and stay on it, the history has the rollback row, and
    every candle has exactly one champion prediction, by the first version after the rollback."""
    findings: dict[str, Any] = {}
    redis = make_redis(redis_url)

    async def while_running(services: ServiceGroup) -> None:
        async with httpx.AsyncClient(timeout=30.0) as client:
            after_start = await tail_ids(redis, [Stream.MODEL_SWAPPED])
            services.start("inference", instance="inference-2")
            await asyncio.to_thread(services.wait_ready, 90.0, ["inference-2"])
            second, second_fields = await activated_at(redis, epoch=2)
            # the late replica read the champion from the database at start: epoch 2, no event needed
            started = await wait_for(redis, [Stream.MODEL_SWAPPED],
                                     lambda m: isinstance(m, ModelSwapped) and m.epoch == 2, after=after_start,
                                     timeout=60.0)
            assert isinstance(started, ModelSwapped) and started.version_id == second.version_id, started
            replicas = {s.replica for s in await all_swaps(redis) if s.epoch == 2}
            assert len(replicas) == 2, replicas
            findings["replicas"] = replicas

            findings["policies"] = {name: os.sched_getscheduler(services.processes[name].process.pid)
                                    for name in ("registry", "trainer", *REPLICAS)}
            after = await tail_ids(redis, [Stream.MODEL_SWAPPED])
            token = services.env["TRADELOOP_ADMIN_TOKEN"]
            registry = services.processes["registry"].base_url
            refused = await client.post(f"{registry}/ai/rollback", params={"slot": SLOT.key})
            findings["rollback_without_token"] = refused.status_code
            answer = await client.post(f"{registry}/ai/rollback", params={"slot": SLOT.key, "reason": "bad model"},
                                       headers={"X-Admin-Token": token})
            findings["rollback"] = (answer.status_code, answer.json())
            findings["swapped"] = await swapped_everywhere(
                redis, replicas, second.previous_version_id or "", 3, after)

            # a late or replayed activation: the epoch-2 event exactly as the registry published it
            after_replay = await tail_ids(redis, [Stream.MODEL_SWAPPED, Stream.MODEL_ACTIVATION_FAILED])
            await redis.xadd(Stream.MODEL_ACTIVATED.value, second_fields)
            before = {name: await metrics_of(client, services.processes[name].base_url) for name in REPLICAS}
            await asyncio.sleep(3.0)  # candles keep flowing; a replica that took the replay would swap back now
            findings["after_replay"] = await _new_entries(
                redis, [Stream.MODEL_SWAPPED, Stream.MODEL_ACTIVATION_FAILED], after_replay)
            findings["metrics"] = {
                name: (before[name], await metrics_of(client, services.processes[name].base_url))
                for name in REPLICAS}
            findings["second"] = second

    try:
        report = await short_loop(while_running)
    finally:
        await redis.aclose()
    first, second_version = (v["version"] for v in report.versions)
    second = findings["second"]
    assert second.version_id == second_version and second.previous_version_id == first

    assert findings["policies"] == {"registry": os.SCHED_BATCH, "trainer": os.SCHED_BATCH,  # cpu_policy defaults
                                    "inference": os.SCHED_OTHER, "inference-2": os.SCHED_OTHER}
    assert findings["rollback_without_token"] == 401
    status, body = findings["rollback"]
    assert status == 200, body
    assert body == {"status": "success", "slot": SLOT.key, "activated_version": first,
                    "previous_version": second_version, "epoch": 3}
    swapped: dict[str, ModelSwapped] = findings["swapped"]
    assert set(swapped) == findings["replicas"], swapped  # every replica, each on its own
    assert findings["after_replay"] == [], "a replayed epoch-2 activation made a replica swap (or fail)"

    for name, (before, after) in findings["metrics"].items():
        assert served(after, first) == 1.0 and served(after, second_version) == 0.0, name
        assert predictions_by(after, first) > predictions_by(before, first), f"{name} predicted nothing after"
        assert predictions_by(after, second_version) == predictions_by(before, second_version), name
        swaps = [v for (metric, _labels), v in after.items() if metric == "tradeloop_model_swaps_total"]
        assert swaps == [sum(v for (metric, _l), v in before.items() if metric == "tradeloop_model_swaps_total")]

    rolled_back_at = min(s.occurred_at for s in swapped.values())
    async with clean_database() as session:
        champion = (await session.execute(select(SlotChampion))).scalar_one()
        history = (await session.execute(select(ActivationHistory).order_by(ActivationHistory.epoch))).scalars().all()
        late = (await session.execute(select(Prediction.version_id).where(
            Prediction.shadow.is_(False), Prediction.created_at > rolled_back_at + timedelta(seconds=0.5)
        ))).scalars().all()
    assert (champion.version_id, champion.epoch) == (first, 3)
    assert [(h.epoch, h.from_version_id, h.to_version_id) for h in history] == [
        (1, None, first), (2, first, second_version), (3, second_version, first)]
    assert (history[-1].actor, history[-1].reason, history[-1].policy) == ("http:admin", "bad model", "rollback")
    assert late and set(late) == {first}, "champion predictions after the rollback must come from the first version"
    assert report.candles_without_prediction == 0


async def _new_entries(redis: Any, streams: list[Stream], after: dict[str, str]) -> list[Message]:
    found: list[Message] = []
    for stream in streams:
        for _entry, fields in await redis.xrange(stream.value, min=f"({after[stream.value]}"):
            found.append(decode_entry(stream, fields))
    return found

"""The loader child: versions loaded and checked in another process, forest-only predictors back, failures
left to the service's own load."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry, Counter

from services.inference.loader import LEFT_REASONS, LoaderProcess
from services.inference.model_slot import ModelSlot
from shared.artifacts import ArtifactStore
from shared.errors import ArtifactError
from shared.messages import ChallengerRef, Family, Slot
from shared.ml.features import FEATURE_NAMES
from shared.ml.predictor import load_predictor
from shared.ml.xgboost_model import FOREST_FILE, XGBoostPredictor

SLOT = Slot(family=Family.XGBOOST, market="BTC-EUR", timeframe="1m")


@pytest_asyncio.fixture(loop_scope="session")
async def loader(store: ArtifactStore) -> AsyncIterator[LoaderProcess]:
    process = LoaderProcess(store.root, niceness=5, timeout=60.0)
    await process.start()
    yield process
    await process.close()


def rows() -> np.ndarray:
    values = np.random.default_rng(3).normal(size=(300, len(FEATURE_NAMES))).astype(np.float32)
    values[::7, 2] = np.nan
    return values


@pytest.mark.asyncio(loop_scope="session")
async def test_a_version_comes_back_forest_only_with_the_booster_s_numbers(
    store: ArtifactStore, refs: list[ChallengerRef], loader: LoaderProcess
) -> None:
    """Given a stored XGBoost version, the child loads and checks it at a lower priority and the service
    gets a predictor without a booster whose scores are the in-process booster's bit for bit."""
    ref = refs[0]
    predictor = await loader.prepare(ref.artifact, ref.feature_schema_hash)
    assert isinstance(predictor, XGBoostPredictor)
    assert predictor.booster is None and predictor.forest is not None
    in_process = load_predictor(store, ref.artifact, ref.feature_schema_hash)
    assert isinstance(in_process, XGBoostPredictor) and in_process.booster is not None
    expected = in_process.booster.inplace_predict(rows())
    assert np.array_equal(predictor.scores(rows()).view(np.uint32), np.asarray(expected, np.float32).view(np.uint32))
    assert predictor.predict(rows()[:2]) == in_process.predict(rows()[:2])
    assert loader.pid is not None and loader.pid != os.getpid()
    assert os.getpriority(os.PRIO_PROCESS, loader.pid) == os.getpriority(os.PRIO_PROCESS, 0) + 5


@pytest.mark.asyncio(loop_scope="session")
async def test_a_corrupt_or_mismatched_artifact_is_refused_with_the_child_s_reason(
    store: ArtifactStore, refs: list[ChallengerRef], loader: LoaderProcess
) -> None:
    ref = refs[1]
    with pytest.raises(ArtifactError, match="sha256"):
        await loader.prepare(ref.artifact.model_copy(update={"sha256": "0" * 64}), ref.feature_schema_hash)
    with pytest.raises(ArtifactError, match="schema"):
        await loader.prepare(ref.artifact, "f" * 64)
    assert await loader.prepare(ref.artifact, ref.feature_schema_hash) is not None  # the child still serves


@pytest.mark.asyncio(loop_scope="session")
async def test_a_killed_child_is_restarted_and_a_silent_one_leaves_the_load_to_the_service(
    store: ArtifactStore, refs: list[ChallengerRef], loader: LoaderProcess
) -> None:
    ref = refs[2]
    assert loader.pid is not None
    os.kill(loader.pid, 9)
    # the first request after the death may find the dead pipe: then it is left to the service (None)
    first = await loader.prepare(ref.artifact, ref.feature_schema_hash)
    second = await loader.prepare(ref.artifact, ref.feature_schema_hash)
    assert second is not None and loader.restarts >= 1
    assert first is None or first.predict(rows()[:1]) == second.predict(rows()[:1])

    registry = CollectorRegistry()
    left = Counter("loads_in_process", "", ["reason"], registry=registry)
    impatient = LoaderProcess(store.root, timeout=0.001, in_process=left)
    assert {reason: registry.get_sample_value("loads_in_process_total", {"reason": reason})
            for reason in LEFT_REASONS} == dict.fromkeys(LEFT_REASONS, 0.0)  # series exist before the first
    try:
        assert await impatient.prepare(ref.artifact, ref.feature_schema_hash) is None
        assert impatient.pid is None  # killed, started again on the next request
        assert registry.get_sample_value("loads_in_process_total", {"reason": "loader_failed"}) == 1
    finally:
        await impatient.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_version_without_a_forest_loads_in_process_and_a_refused_one_keeps_the_champion(
    store: ArtifactStore, refs: list[ChallengerRef], loader: LoaderProcess
) -> None:
    files, metadata = store.get_bundle(refs[0].artifact)
    plain = store.put_bundle({name: data for name, data in files.items() if name != FOREST_FILE}, metadata)
    registry = CollectorRegistry()
    loader.in_process = Counter("loads_in_process", "", ["reason"], registry=registry)
    assert await loader.prepare(plain, refs[0].feature_schema_hash) is None
    assert registry.get_sample_value("loads_in_process_total", {"reason": "not_prepared"}) == 1

    slot = ModelSlot(SLOT, store, loader)
    result = await slot.swap(version_id="plain", epoch=1, ref=plain, schema_hash=refs[0].feature_schema_hash)
    assert result.swapped and isinstance(slot.current.predictor if slot.current else None, XGBoostPredictor)
    assert slot.current is not None and slot.current.predictor.booster is not None  # type: ignore[attr-defined]

    await slot.swap(version_id=refs[1].version_id, epoch=2, ref=refs[1].artifact, schema_hash=refs[1].feature_schema_hash)
    assert slot.current.version_id == refs[1].version_id
    assert slot.current.predictor.booster is None  # type: ignore[attr-defined]
    with pytest.raises(ArtifactError):
        await slot.swap(version_id="bad", epoch=3, ref=refs[2].artifact.model_copy(update={"sha256": "1" * 64}),
                        schema_hash=refs[2].feature_schema_hash)
    assert slot.current.version_id == refs[1].version_id and slot.epoch == 2

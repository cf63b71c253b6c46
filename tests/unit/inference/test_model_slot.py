"""A slot's champion and shadow challengers: swap rules, challenger sets by revision, expiry, batch = row."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from services.inference.model_slot import ModelSlot, ServedModel
from services.inference.predictions import is_stale
from shared.artifacts import ArtifactStore
from shared.messages import ChallengerRef, Family, Slot, utc_now
from shared.ml.features import FEATURE_NAMES
from shared.ml.predictor import load_predictor

SLOT = Slot(family=Family.XGBOOST, market="BTC-EUR", timeframe="1m")


@pytest.mark.asyncio(loop_scope="session")
async def test_challengers_load_by_revision_and_an_older_revision_changes_nothing(
    store: ArtifactStore, refs: list[ChallengerRef]
) -> None:
    """Given an empty slot, when revision 1 names two challengers, both are served; a replayed or older
    revision is ignored; revision 2 keeps the loaded one (same object) and drops the other."""
    slot = ModelSlot(SLOT, store)
    first = await slot.set_challengers(1, refs[:2])
    assert first.applied and set(first.loaded) == {r.version_id for r in refs[:2]} and not first.failed
    kept = slot.challengers[refs[0].version_id]

    assert not (await slot.set_challengers(1, [])).applied
    assert len(slot.challengers) == 2

    second = await slot.set_challengers(2, [refs[0], refs[2]])
    assert second.applied and second.loaded == (refs[2].version_id,)
    assert second.removed == (refs[1].version_id,)
    assert slot.challengers[refs[0].version_id] is kept  # not reloaded
    assert list(slot.challengers) == [refs[0].version_id, refs[2].version_id]

    assert (await slot.set_challengers(3, [])).applied
    assert slot.challengers == {} and slot.revision == 3


@pytest.mark.asyncio(loop_scope="session")
async def test_a_challenger_that_fails_to_load_is_left_out_and_the_champion_is_untouched(
    store: ArtifactStore, refs: list[ChallengerRef]
) -> None:
    slot = ModelSlot(SLOT, store)
    champion = refs[0]
    await slot.swap(version_id=champion.version_id, epoch=1, ref=champion.artifact,
                    schema_hash=champion.feature_schema_hash)
    broken = refs[1].model_copy(update={"artifact": refs[1].artifact.model_copy(
        update={"sha256": "0" * 64})})
    wrong_schema = refs[2].model_copy(update={"feature_schema_hash": "f" * 64})
    change = await slot.set_challengers(1, [broken, wrong_schema])
    assert change.applied and not change.loaded
    assert [version for version, _error in change.failed] == [broken.version_id, wrong_schema.version_id]
    assert "sha256" in repr(change.failed[0][1]) and "schema" in repr(change.failed[1][1])
    assert slot.challengers == {} and slot.revision == 1
    assert slot.current is not None and slot.current.version_id == champion.version_id


@pytest.mark.asyncio(loop_scope="session")
async def test_the_champion_is_never_its_own_shadow(
    store: ArtifactStore, refs: list[ChallengerRef]
) -> None:
    slot = ModelSlot(SLOT, store)
    ref = refs[0]
    await slot.set_challengers(1, refs[:2])
    await slot.swap(version_id=ref.version_id, epoch=1, ref=ref.artifact, schema_hash=ref.feature_schema_hash)
    assert [m.version_id for m in slot.shadows()] == [refs[1].version_id]


@pytest.mark.asyncio(loop_scope="session")
async def test_swap_records_when_the_version_became_champion(
    store: ArtifactStore, refs: list[ChallengerRef]
) -> None:
    slot = ModelSlot(SLOT, store)
    ref = refs[0]
    since = utc_now() - timedelta(hours=5)
    result = await slot.swap(version_id=ref.version_id, epoch=1, ref=ref.artifact,
                             schema_hash=ref.feature_schema_hash, activated_at=since)
    assert result.swapped and slot.current is not None and slot.current.activated_at == since
    assert not (await slot.swap(version_id="v-old", epoch=1, ref=ref.artifact,
                                schema_hash=ref.feature_schema_hash)).swapped


def test_staleness_follows_the_configured_expiry(
    store: ArtifactStore, refs: list[ChallengerRef]
) -> None:
    predictor = load_predictor(store, refs[0].artifact)
    now = utc_now()
    old = ServedModel("v1", 1, predictor, activated_at=now - timedelta(hours=3))
    assert is_stale(old, now, 2.0)
    assert not is_stale(old, now, 4.0)
    assert not is_stale(old, now, None)  # expiry off
    assert not is_stale(ServedModel("v1", 1, predictor), now, 1.0)  # activation time unknown


def test_predicting_a_batch_gives_each_row_exactly_its_single_row_prediction(
    store: ArtifactStore, refs: list[ChallengerRef]
) -> None:
    """Batching candles must not change any champion number."""
    predictor = load_predictor(store, refs[0].artifact)
    rows = np.random.default_rng(1).normal(size=(37, len(FEATURE_NAMES))).astype(np.float32)
    batch = predictor.predict(rows)
    assert batch == [predictor.predict(row.reshape(1, -1))[0] for row in rows]


@pytest.mark.asyncio(loop_scope="session")
async def test_a_swapped_in_version_serves_its_verified_forest_from_the_first_prediction(
    store: ArtifactStore, refs: list[ChallengerRef]
) -> None:
    """The compiled forest is checked before the swap: the version served predicts through the forest at
    once, with the booster's numbers; so does a challenger."""
    slot = ModelSlot(SLOT, store)
    version = refs[0]
    rows = np.random.default_rng(3).normal(size=(64, len(FEATURE_NAMES))).astype(np.float32)
    assert (await slot.swap(version_id=version.version_id, epoch=1, ref=version.artifact,
                            schema_hash=version.feature_schema_hash)).swapped
    assert slot.current is not None
    served: Any = slot.current.predictor
    assert served.forest is not None and served.candidate is None
    booster = load_predictor(store, version.artifact)
    assert getattr(booster, "forest", None) is None  # loaded, not yet verified: predicts through XGBoost
    assert served.predict(rows) == booster.predict(rows)
    assert (await slot.set_challengers(1, refs[1:2])).applied
    assert all(getattr(m.predictor, "forest", None) is not None for m in slot.challengers.values())

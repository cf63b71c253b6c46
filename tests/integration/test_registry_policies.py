"""Registry at full depth on real PostgreSQL + Redis: policies, shadow, rollback, archive, scoring, guard, API."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.registry import challengers, scoring
from services.registry.api import build_api
from services.registry.handlers import Refused, RegistryDeps, RegistryMetrics, handle_activate, handle_model_trained
from services.registry.promotion import judge_new_version
from services.registry.settings import PolicyConfig, RegistrySettings
from services.trainer.datasets import bootstrap_samples
from services.trainer.families.xgboost import XGBoostParams
from services.trainer.pipeline import RunConfig, train_xgboost
from shared.artifacts import ArtifactStore
from shared.broker import Redis
from shared.db.models import ActivationHistory, Prediction, SlotChampion, TrainingSample, VersionStats
from shared.db.models_registry import LiveScore, PromotionDecision, SlotChallenger
from shared.messages import (
    ActivateModel,
    ArtifactRef,
    ChallengersChanged,
    Family,
    ModelTrained,
    Slot,
    TradeOutcomeRecorded,
)
from shared.ml.features import feature_schema_hash
from shared.publishing import EventPublisher
from shared.streams import Stream
from shared.waiting import decode_entry

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SLOT = Slot(family=Family.XGBOOST, market="BTC-EUR", timeframe="1m")
TOKEN = "registry-policy-test-token-42"
_counter = itertools.count()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ArtifactRef]:
    """One real, loadable XGBoost bundle shared by the versions these tests register."""
    root = tmp_path_factory.mktemp("artifacts")
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 600)))
    candles = pd.DataFrame({"open_time": pd.date_range("2026-01-01", periods=600, freq="1min", tz="UTC"),
                            "open": close, "high": close * 1.002, "low": close * 0.998, "close": close,
                            "volume": rng.uniform(1, 5, 600)})
    samples = bootstrap_samples(candles, datetime(2026, 1, 1, tzinfo=UTC), 5)
    config = RunConfig(min_samples=100, window_days=30, horizon=5, validation_fraction=0.2,
                       decision_threshold=0.001, params=XGBoostParams(20, 3, 0.1, 1))
    trained = train_xgboost(samples, config, {})
    return root, ArtifactStore(root).put_bundle(trained.files, trained.metadata)


def _deps(sessions: async_sessionmaker[AsyncSession], redis: Redis, root: Path, **settings: Any) -> RegistryDeps:
    return RegistryDeps(settings=RegistrySettings(admin_token=TOKEN, **settings), sessions=sessions,
                        store=ArtifactStore(root), publisher=EventPublisher(redis),
                        metrics=RegistryMetrics.create(None))


def _trained(ref: ArtifactRef, accuracy: float, validation_samples: int = 200, **metrics: float) -> ModelTrained:
    n = next(_counter)
    return ModelTrained(
        version_id=f"v20260101_{n:06d}", slot=SLOT, run_id=uuid.uuid4().hex, model_type="xgboost_continuous",
        artifact=ref, feature_schema_hash=feature_schema_hash(),
        trained_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=n), training_samples=800,
        validation_samples=validation_samples, metrics={"validation_accuracy": accuracy, **metrics})


async def _register(deps: RegistryDeps, event: ModelTrained) -> str:
    version = await handle_model_trained(event, deps)
    assert version is not None
    await judge_new_version(deps, version)
    return event.version_id


async def _champion(sessions: async_sessionmaker[AsyncSession]) -> str | None:
    async with sessions() as session:
        row = await session.get(SlotChampion, SLOT.key)
    return row.version_id if row else None


async def _decisions(sessions: async_sessionmaker[AsyncSession]) -> list[PromotionDecision]:
    async with sessions() as session:
        return list((await session.execute(select(PromotionDecision).order_by(PromotionDecision.id))).scalars())


async def test_manual_policy_never_activates_by_itself(sessions: Any, redis: Redis, artifact: Any) -> None:
    deps = _deps(sessions, redis, artifact[0])
    await _register(deps, _trained(artifact[1], 0.7))
    assert await _champion(sessions) is None


async def test_newest_policy_activates_every_new_version(sessions: Any, redis: Redis, artifact: Any) -> None:
    deps = _deps(sessions, redis, artifact[0], promotion_policy="newest")
    first = await _register(deps, _trained(artifact[1], 0.6))
    second = await _register(deps, _trained(artifact[1], 0.5))
    assert await _champion(sessions) == second
    async with sessions() as session:
        history = (await session.execute(select(ActivationHistory).order_by(ActivationHistory.epoch))).scalars().all()
    assert [(h.from_version_id, h.to_version_id, h.policy) for h in history] == [
        (None, first, "newest"), (first, second, "newest")]


async def test_champion_challenger_offline_checks(sessions: Any, redis: Redis, artifact: Any) -> None:
    policy = PolicyConfig(policy="champion_challenger", margin=0.02, shadow=False, max_drawdown_worsening=0.05)
    deps = _deps(sessions, redis, artifact[0], slot_policies={SLOT.key: policy})
    first = await _register(deps, _trained(artifact[1], 0.55, backtest_max_drawdown=0.10))
    assert await _champion(sessions) == first  # nothing to beat
    await _register(deps, _trained(artifact[1], 0.56, backtest_max_drawdown=0.10))  # within the margin
    await _register(deps, _trained(artifact[1], 0.60, validation_samples=20))  # too few samples
    await _register(deps, _trained(artifact[1], 0.65, backtest_max_drawdown=0.30))  # drawdown much worse
    assert await _champion(sessions) == first
    better = await _register(deps, _trained(artifact[1], 0.60, backtest_max_drawdown=0.12))
    assert await _champion(sessions) == better
    decisions = await _decisions(sessions)
    assert [d.promoted for d in decisions] == [True, False, False, False, True]
    assert "does not beat" in decisions[1].reason and decisions[1].numbers["champion"] == 0.55
    assert decisions[2].reason == "too few validation samples"
    assert "drawdown" in decisions[3].reason


async def _outcome(sessions: Any, deps: RegistryDeps, version: str, shadow: dict[str, str], move: float,
                   minute: int) -> None:
    """An executed champion prediction and the challengers' predictions for the same candle, then its outcome."""
    candle = datetime(2026, 2, 1, tzinfo=UTC) + timedelta(minutes=minute)
    prediction_id = str(uuid.uuid4())
    entry, exit_ = 100.0, 100.0 * (1 + move)
    async with sessions() as session, session.begin():
        session.add(Prediction(prediction_id=prediction_id, slot_key=SLOT.key, version_id=version, market="BTC-EUR",
                               timeframe="1m", candle_open_time=candle, action="BUY", confidence=0.6,
                               predicted_return=0.01, shadow=False, features=np.zeros(20, np.float32),
                               created_at=candle))
        for challenger, action in shadow.items():
            session.add(Prediction(prediction_id=str(uuid.uuid4()), slot_key=SLOT.key, version_id=challenger,
                                   market="BTC-EUR", timeframe="1m", candle_open_time=candle, action=action,
                                   confidence=0.6, predicted_return=0.0, shadow=True,
                                   features=np.zeros(20, np.float32), created_at=candle))
        session.add(TrainingSample(prediction_id=prediction_id, symbol="BTC-EUR", timeframe="1m", timestamp=candle,
                                   model_version_id=version, predicted_action="BUY", prediction_confidence=0.6,
                                   features=np.zeros(20, np.float32), feature_count=20, executed=True,
                                   execution_side="BUY", quantity=1.0, entry_price=entry, exit_price=exit_,
                                   entry_fee=0.0, exit_fee=0.0, entry_time=candle, exit_time=candle,
                                   realized_pnl=exit_ - entry, target_label=move, target_class="WIN" if move > 0
                                   else "LOSS", outcome_known=True))
    await scoring.handle_outcome(deps, TradeOutcomeRecorded(
        prediction_id=uuid.UUID(prediction_id), version_id=version, slot=SLOT, market="BTC-EUR",
        predicted_action="BUY", side="BUY", realized_pnl=exit_ - entry, target_label=move,
        target_class="WIN" if move > 0 else "LOSS", candle_open_time=candle))


async def test_shadow_challenger_is_promoted_only_after_a_significant_paired_test(
    sessions: Any, redis: Redis, artifact: Any
) -> None:
    policy = PolicyConfig(policy="champion_challenger", margin=0.0, shadow=True, shadow_min_outcomes=12,
                          significance=0.05)
    deps = _deps(sessions, redis, artifact[0], slot_policies={SLOT.key: policy})
    champion = await _register(deps, _trained(artifact[1], 0.55))
    challenger = await _register(deps, _trained(artifact[1], 0.60))
    assert await _champion(sessions) == champion
    events = [decode_entry(Stream.CHALLENGERS_CHANGED, f) for _i, f in await redis.xrange(
        Stream.CHALLENGERS_CHANGED.value)]
    assert isinstance(events[-1], ChallengersChanged) and [c.version_id for c in events[-1].challengers] == [challenger]
    # the champion buys into falling markets; the challenger says SELL: its would-be return is the negation
    for minute in range(11):
        await _outcome(sessions, deps, champion, {challenger: "SELL"}, move=-0.01 - minute * 0.001, minute=minute)
    assert await _champion(sessions) == champion  # 11 < K: still pending
    await _outcome(sessions, deps, champion, {challenger: "SELL"}, move=-0.02, minute=11)
    assert await _champion(sessions) == challenger
    final = (await _decisions(sessions))[-1]
    assert final.promoted and final.stage == "shadow" and final.numbers["p_value"] < 0.05
    assert final.numbers["pairs"] == 12
    async with sessions() as session:
        stats = await session.get(VersionStats, challenger)
        assert stats is not None and stats.total_predictions == 12 and stats.correct_predictions == 12
        assert stats.total_pnl > 0
        assert (await session.execute(select(SlotChallenger))).first() is None  # left the shadow set


async def test_live_scoring_is_idempotent_and_guard_rolls_back(sessions: Any, redis: Redis, artifact: Any) -> None:
    deps = _deps(sessions, redis, artifact[0], guard_enabled=True, guard_window=5, guard_min_accuracy=0.55)
    good = await _register(deps, _trained(artifact[1], 0.6))
    bad = await _register(deps, _trained(artifact[1], 0.6))
    await handle_activate(ActivateModel(version_id=good), deps)
    await handle_activate(ActivateModel(version_id=bad), deps)
    for minute in range(4):
        await _outcome(sessions, deps, bad, {}, move=-0.01, minute=minute)
    assert await _champion(sessions) == bad  # 4 < N
    await _outcome(sessions, deps, bad, {}, move=-0.01, minute=4)
    assert await _champion(sessions) == good
    async with sessions() as session:
        last = (await session.execute(select(ActivationHistory).order_by(ActivationHistory.epoch.desc()))).first()
        scores = (await session.execute(select(LiveScore).where(LiveScore.version_id == bad))).scalars().all()
        stats = await session.get(VersionStats, bad)
    assert last is not None and last[0].policy == "guard" and "live accuracy 0.000" in last[0].reason
    assert len(scores) == 5 and stats is not None and stats.total_predictions == 5


async def test_rollback_shadow_and_archive_commands(sessions: Any, redis: Redis, artifact: Any) -> None:
    deps = _deps(sessions, redis, artifact[0])
    one, two, three = [await _register(deps, _trained(artifact[1], 0.6)) for _ in range(3)]
    with pytest.raises(Refused, match="no previous champion"):
        await challengers.rollback(deps, SLOT, to_version_id=None, actor="t", reason="")
    await handle_activate(ActivateModel(version_id=one), deps)
    await handle_activate(ActivateModel(version_id=two), deps)
    rolled = await challengers.rollback(deps, SLOT, to_version_id=None, actor="t", reason="bad model")
    assert rolled.version_id == one and await _champion(sessions) == one
    await challengers.add_challenger(deps, three, actor="t", reason="try")
    with pytest.raises(Refused, match="is the champion"):
        await challengers.add_challenger(deps, one, actor="t", reason="")
    with pytest.raises(Refused, match="is champion"):
        await challengers.archive(deps, one, actor="t", reason="")
    await challengers.archive(deps, three, actor="t", reason="retired")
    with pytest.raises(Refused, match="archived"):
        await challengers.rollback(deps, SLOT, to_version_id=three, actor="t", reason="")
    assert await handle_activate(ActivateModel(version_id=three), deps) is None
    assert await _champion(sessions) == one
    changes = [decode_entry(Stream.CHALLENGERS_CHANGED, f) for _i, f in await redis.xrange(
        Stream.CHALLENGERS_CHANGED.value)]
    assert [(c.revision, [x.version_id for x in c.challengers]) for c in changes if isinstance(c, ChallengersChanged)
            ] == [(1, [three]), (2, [])]


async def test_admin_api_token_history_at_time_and_seed_shapes(sessions: Any, redis: Redis, artifact: Any) -> None:
    deps = _deps(sessions, redis, artifact[0])
    app = FastAPI()
    app.include_router(build_api(deps, redis))
    version = await _register(deps, _trained(artifact[1], 0.62))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry") as client:
        assert (await client.get("/ai/models")).status_code == 401
        assert (await client.get("/ai/models", headers={"X-Admin-Token": "wrong"})).status_code == 403
        headers = {"X-Admin-Token": TOKEN}
        before = datetime.now(UTC)
        activated = await client.post(f"/ai/activate-model/{version}", headers=headers)
        assert activated.status_code == 200
        assert {"status", "activated_version", "model_type", "train_accuracy", "validation_accuracy", "message"} <= set(
            activated.json())
        listed = (await client.get("/ai/models", headers=headers)).json()
        assert listed["status"] == "ok" and listed["count"] == 1
        model = listed["models"][0]
        assert model["is_active"] is True and model["total_predictions"] == 0 and model["live_accuracy"] is None
        assert (await client.post("/ai/activate-model/v20990101_000000", headers=headers)).status_code == 404
        at_before = (await client.get("/ai/history", params={"slot": SLOT.key, "at": before.isoformat()},
                                      headers=headers)).json()
        at_now = (await client.get("/ai/history", params={"slot": SLOT.key, "at": datetime.now(UTC).isoformat()},
                                   headers=headers)).json()
        assert at_before["champion"] is None and at_now["champion"] == version
        samples = (await client.get("/ai/training-samples", params={"limit": 5, "outcome_known": True},
                                    headers=headers)).json()
        assert samples == {"status": "ok", "count": 0, "samples": []}
        assert (await client.post("/ai/rollback", params={"slot": SLOT.key}, headers=headers)).status_code == 409

"""Apply the slot's promotion policy to a new version or a shadow challenger, and record the decision."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select

from services.registry import repository
from services.registry.challengers import add_challenger, remove_challenger
from services.registry.handlers import Refused, RegistryDeps, activate_version, check_activatable
from services.registry.policy import Verdict, offline_verdict, shadow_verdict
from services.registry.settings import PolicyConfig, policy_for
from shared.db.models import ModelVersion, SlotChampion
from shared.db.models_registry import LiveScore, PromotionDecision
from shared.messages import ModelActivated, PromotionDecided, Slot, utc_now

log = logging.getLogger(__name__)


async def record(deps: RegistryDeps, version: ModelVersion, champion_id: str | None, policy: str,
                 verdict: Verdict) -> None:
    """Store and publish a decision (promoted or not) with its numbers."""
    async with deps.sessions() as session, session.begin():
        session.add(PromotionDecision(
            slot_key=version.slot_key, policy=policy, challenger_version_id=version.version_id,
            champion_version_id=champion_id, promoted=verdict.promoted, stage=verdict.stage, reason=verdict.reason,
            numbers=verdict.numbers, decided_at=utc_now()))
    deps.metrics.decisions.labels(policy, verdict.stage, str(verdict.promoted).lower()).inc()
    await deps.publisher.publish(PromotionDecided(
        slot=Slot.from_key(version.slot_key), policy=policy, challenger_version_id=version.version_id,
        champion_version_id=champion_id, promoted=verdict.promoted, reason=verdict.reason,
        numbers={**verdict.numbers, "stage": verdict.stage}))


async def _champion(deps: RegistryDeps, slot_key: str) -> ModelVersion | None:
    async with deps.sessions() as session:
        alias = await session.get(SlotChampion, slot_key)
    return await repository.get_version(deps.sessions, alias.version_id) if alias else None


async def judge_new_version(deps: RegistryDeps, version: ModelVersion) -> ModelActivated | None:
    """Policy for a just-registered version: newest wins, or champion/challenger's offline checks."""
    config = policy_for(deps.settings, version.slot_key)
    if config.policy == "manual":
        return None
    try:
        version = await check_activatable(deps, version.version_id, version.slot_key)
    except Refused as refusal:
        await record(deps, version, None, config.policy, Verdict(False, "offline", str(refusal)))
        return None
    if config.policy == "newest":
        return await activate_version(deps, version, actor="policy:newest", reason="newest version wins",
                                      policy="newest", command_id=uuid.uuid5(uuid.NAMESPACE_URL, version.version_id))
    async with deps.sessions() as session:
        judged = (await session.execute(select(PromotionDecision.id).where(
            PromotionDecision.challenger_version_id == version.version_id).limit(1))).first()
    if judged is not None:
        return None  # a redelivered ModelTrained: the decision stands
    champion = await _champion(deps, version.slot_key)
    verdict = offline_verdict(version, champion, config)
    await record(deps, version, champion.version_id if champion else None, config.policy, verdict)
    if verdict.promoted:
        return await activate_version(deps, version, actor="policy:champion_challenger", reason=verdict.reason,
                                      policy="champion_challenger",
                                      command_id=uuid.uuid5(uuid.NAMESPACE_URL, version.version_id))
    if verdict.stage == "pending":
        await add_challenger(deps, version.version_id, actor="policy:champion_challenger", reason=verdict.reason)
    return None


async def judge_shadow(deps: RegistryDeps, challenger_id: str, config: PolicyConfig) -> ModelActivated | None:
    """After a scored outcome: test a shadow challenger against the champion on their paired returns."""
    challenger = await repository.get_version(deps.sessions, challenger_id)
    champion = await _champion(deps, challenger.slot_key) if challenger else None
    if challenger is None or champion is None:
        return None
    async with deps.sessions() as session:
        mine = {s.outcome_prediction_id: s.trade_return for s in (await session.execute(
            select(LiveScore).where(LiveScore.version_id == challenger_id, LiveScore.shadow.is_(True)))).scalars()}
        theirs = {s.outcome_prediction_id: s.trade_return for s in (await session.execute(
            select(LiveScore).where(LiveScore.version_id == champion.version_id,
                                    LiveScore.outcome_prediction_id.in_(list(mine))))).scalars()}
    paired = sorted(set(mine) & set(theirs))
    verdict = shadow_verdict([mine[k] for k in paired], [theirs[k] for k in paired], config)
    if not verdict.final:
        return None
    await record(deps, challenger, champion.version_id, config.policy, verdict)
    await remove_challenger(deps, challenger_id, actor="policy:champion_challenger", reason=verdict.reason)
    if not verdict.promoted:
        return None
    return await activate_version(deps, challenger, actor="policy:champion_challenger", reason=verdict.reason,
                                  policy="champion_challenger", command_id=uuid.uuid4())

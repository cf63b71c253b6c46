"""Live scoring: each trade outcome updates the version that made the prediction and every shadow
challenger's would-be result on the same candle; the guard rolls back a decaying champion."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select, update

from services.registry import challengers, promotion
from services.registry.handlers import Refused, RegistryDeps
from services.registry.settings import policy_for
from shared.db.models import Prediction, SlotChampion, TrainingSample, VersionStats
from shared.db.models_registry import LiveScore
from shared.db.session import dialect_insert, rows_affected
from shared.messages import Action, ModelActivated, Slot, TradeOutcomeRecorded, utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TradeReturns:
    """Returns of a long and a short position over the traded period, after the trade's fees."""

    long: float
    short: float
    notional: float

    def for_action(self, action: str) -> float:
        return {Action.BUY.value: self.long, Action.SELL.value: self.short}.get(action, 0.0)


def trade_returns(sample: TrainingSample) -> TradeReturns | None:
    """Long/short returns of the executed trade's price move (None when the sample lacks prices)."""
    if not (sample.entry_price and sample.exit_price and sample.quantity):
        return None
    notional = sample.entry_price * sample.quantity
    fees = ((sample.entry_fee or 0.0) + (sample.exit_fee or 0.0)) / notional
    move = sample.exit_price / sample.entry_price - 1.0
    return TradeReturns(long=move - fees, short=-move - fees, notional=notional)


async def _insert_score(session: object, row: dict[str, object]) -> bool:
    statement = dialect_insert(session, LiveScore).values(**row).on_conflict_do_nothing(  # type: ignore[arg-type]
        index_elements=["outcome_prediction_id", "version_id"])
    return rows_affected(await session.execute(statement)) == 1  # type: ignore[attr-defined]


async def score_outcome(deps: RegistryDeps, event: TradeOutcomeRecorded) -> list[str]:
    """Score the outcome once (idempotent); return the shadow challengers that were scored."""
    outcome_id = str(event.prediction_id)
    scored_shadow: list[str] = []
    async with deps.sessions() as session, session.begin():
        sample = (await session.execute(select(TrainingSample).where(
            TrainingSample.prediction_id == outcome_id))).scalar_one_or_none()
        executed = await session.get(Prediction, outcome_id)
        returns = trade_returns(sample) if sample is not None else None
        version_id = event.version_id or (executed.version_id if executed else None)
        if version_id is None:
            log.warning("outcome %s names no version; not scored", outcome_id)
            return []
        slot_key = event.slot.key if event.slot else (executed.slot_key if executed else "")
        pnl = event.realized_pnl
        rows: list[tuple[str, bool, str, float, float, bool | None]] = [
            (version_id, False, event.predicted_action.value, event.target_label, pnl, event.target_class == "WIN")]
        if executed is not None and returns is not None:
            shadows = (await session.execute(select(Prediction).where(
                Prediction.shadow.is_(True), Prediction.market == executed.market,
                Prediction.timeframe == executed.timeframe,
                Prediction.candle_open_time == executed.candle_open_time))).scalars().all()
            for shadow in shadows:
                would_be = returns.for_action(shadow.action)
                correct = None if shadow.action == Action.HOLD.value else would_be > 0
                rows.append((shadow.version_id, True, shadow.action, would_be, would_be * returns.notional, correct))
        for version, shadow_flag, action, trade_return, row_pnl, correct in rows:
            fresh = await _insert_score(session, {
                "outcome_prediction_id": outcome_id, "version_id": version, "slot_key": slot_key,
                "shadow": shadow_flag, "action": action, "trade_return": trade_return, "pnl": row_pnl,
                "correct": correct, "scored_at": utc_now()})
            if not fresh:
                continue
            if shadow_flag:
                scored_shadow.append(version)
            await session.execute(update(VersionStats).where(VersionStats.version_id == version).values(
                total_predictions=VersionStats.total_predictions + 1,
                correct_predictions=VersionStats.correct_predictions + (1 if correct else 0),
                total_pnl=VersionStats.total_pnl + row_pnl))
    await _publish_gauges(deps, [r[0] for r in rows], slot_key)
    return scored_shadow


async def _publish_gauges(deps: RegistryDeps, version_ids: list[str], slot_key: str) -> None:
    async with deps.sessions() as session:
        stats = (await session.execute(select(VersionStats).where(
            VersionStats.version_id.in_(version_ids)))).scalars().all()
        champion = await session.get(SlotChampion, slot_key) if slot_key else None
    for row in stats:
        if row.total_predictions:
            deps.metrics.live_accuracy.labels(slot_key, row.version_id).set(
                row.correct_predictions / row.total_predictions)
        gauge = deps.metrics.pnl if champion and champion.version_id == row.version_id else deps.metrics.shadow_pnl
        gauge.labels(slot_key, row.version_id).set(row.total_pnl)


async def guard(deps: RegistryDeps, slot_key: str) -> ModelActivated | None:
    """Roll back the slot's champion when its accuracy over the last N live outcomes is below the threshold."""
    settings = deps.settings
    if not settings.guard_enabled or not slot_key:
        return None
    async with deps.sessions() as session:
        champion = await session.get(SlotChampion, slot_key)
        if champion is None:
            return None
        recent = (await session.execute(select(LiveScore.correct).where(
            LiveScore.version_id == champion.version_id, LiveScore.shadow.is_(False),
            LiveScore.scored_at >= champion.activated_at).order_by(LiveScore.id.desc())
            .limit(settings.guard_window))).scalars().all()
    if len(recent) < settings.guard_window:
        return None
    accuracy = sum(1 for c in recent if c) / len(recent)
    if accuracy >= settings.guard_min_accuracy:
        return None
    reason = (f"live accuracy {accuracy:.3f} over the last {len(recent)} outcomes is below "
              f"{settings.guard_min_accuracy:.2f}")
    try:
        event = await challengers.rollback(deps, Slot.from_key(slot_key), to_version_id=None, actor="guard",
                                           reason=reason, policy="guard")
    except Refused as refusal:
        log.error("guard wanted to roll back %s but cannot: %s", slot_key, refusal)
        return None
    log.warning("guard rolled back %s: %s", slot_key, reason)
    return event


async def handle_outcome(deps: RegistryDeps, event: TradeOutcomeRecorded) -> None:
    """Score, then let the promotion policy judge the shadow challengers and the guard check the champion."""
    scored = await score_outcome(deps, event)
    slot_key = event.slot.key if event.slot else ""
    if slot_key:
        config = policy_for(deps.settings, slot_key)
        if config.policy == "champion_challenger" and config.shadow:
            for challenger_id in scored:
                await promotion.judge_shadow(deps, challenger_id, config)
    await guard(deps, slot_key)

"""Admin HTTP API with seed 003's paths and response shapes, guarded by X-Admin-Token."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from sqlalchemy import select

from services.registry import challengers, repository
from services.registry.handlers import Refused, RegistryDeps, activate_version, check_activatable
from shared.broker import Redis
from shared.db.models import ModelVersion, TrainingSample, VersionStats
from shared.db.models_registry import PromotionDecision
from shared.messages import (
    Family,
    ModelTrained,
    RetrainFailed,
    RetrainModel,
    RetrainOverrides,
    Slot,
)
from shared.streams import Stream
from shared.waiting import tail_ids, wait_for


def _version_view(version: ModelVersion, stats: VersionStats | None, active: bool) -> dict[str, Any]:
    total = stats.total_predictions if stats else 0
    correct = stats.correct_predictions if stats else 0
    return {
        "version_id": version.version_id,
        "model_type": version.model_type,
        "slot": version.slot_key,
        "trained_at": version.trained_at.isoformat().replace("+00:00", "Z"),
        "training_samples": version.training_samples,
        "validation_samples": version.validation_samples,
        "train_accuracy": version.train_accuracy,
        "validation_accuracy": version.validation_accuracy,
        "train_mae": version.train_mae,
        "validation_mae": version.validation_mae,
        "is_active": active,
        "status": version.status,
        "total_predictions": total,
        "correct_predictions": correct,
        "live_accuracy": (correct / total) if total else None,
        "total_pnl": stats.total_pnl if stats else 0.0,
        "artifact_sha256": version.artifact_sha256,
    }


def build_api(deps: RegistryDeps, redis: Redis) -> APIRouter:
    """Return the admin routes."""
    token = deps.settings.admin_token.get_secret_value().encode()

    async def require_admin(x_admin_token: Annotated[str | None, Header()] = None) -> None:
        if x_admin_token is None:
            raise HTTPException(401, "X-Admin-Token header required")
        if not hmac.compare_digest(x_admin_token.encode(), token):
            raise HTTPException(403, "invalid X-Admin-Token")

    async def refused_as_http(action: Awaitable[Any]) -> Any:
        try:
            return await action
        except Refused as refusal:
            status = 404 if str(refusal).startswith("unknown version") else 409
            raise HTTPException(status, str(refusal)) from refusal

    api = APIRouter(prefix="/ai", tags=["admin"], dependencies=[Depends(require_admin)])

    @api.get("/models")
    async def list_models(slot: str | None = None) -> dict[str, Any]:
        champions = await repository.champions(deps.sessions)
        active = {c.version_id for c in champions.values()}
        rows = await repository.list_versions(deps.sessions, slot)
        models = [_version_view(v, s, v.version_id in active) for v, s in rows]
        return {"status": "ok", "count": len(models), "models": models}

    @api.get("/models/{version_id}")
    async def model_detail(version_id: str) -> dict[str, Any]:
        version = await repository.get_version(deps.sessions, version_id)
        if version is None:
            raise HTTPException(404, f"unknown version {version_id}")
        champions = await repository.champions(deps.sessions)
        active = any(c.version_id == version_id for c in champions.values())
        rows = await repository.list_versions(deps.sessions, version.slot_key)
        stats = next((s for v, s in rows if v.version_id == version_id), None)
        return {"status": "ok", "model": {**_version_view(version, stats, active), "metrics": version.metrics,
                                          "params": version.params, "lineage": version.lineage,
                                          "artifact_path": version.artifact_path}}

    @api.post("/activate-model/{version_id}")
    async def activate_model(version_id: str, reason: str = "activated via admin API") -> dict[str, Any]:
        version = await refused_as_http(check_activatable(deps, version_id, None))
        event = await activate_version(deps, version, actor="http:admin", reason=reason, policy="manual",
                                       command_id=uuid.uuid4())
        return {
            "status": "success",
            "activated_version": version.version_id,
            "model_type": version.model_type,
            "train_accuracy": version.train_accuracy,
            "validation_accuracy": version.validation_accuracy,
            "epoch": event.epoch,
            "message": "Model activated. Inference replicas hot-swap it now; no restart needed.",
        }

    @api.post("/retrain")
    async def retrain(
        min_samples: Annotated[int | None, Query(ge=1)] = None,
        market: str | None = None,
        timeframe: str | None = None,
        wait: bool = True,
    ) -> dict[str, Any]:
        try:
            slot = Slot(family=Family.XGBOOST, market=market or deps.settings.default_market,
                        timeframe=timeframe or deps.settings.default_timeframe)
        except ValueError as error:
            raise HTTPException(422, str(error)) from error
        command = RetrainModel(slot=slot, overrides=RetrainOverrides(min_samples=min_samples),
                               requested_by="http:admin")
        after = await tail_ids(redis, [Stream.MODEL_TRAINED, Stream.RETRAIN_FAILED])
        await deps.publisher.publish(command)
        if not wait:
            return {"status": "accepted", "command_event_id": str(command.event_id), "slot": slot.key}
        result = await wait_for(
            redis, [Stream.MODEL_TRAINED, Stream.RETRAIN_FAILED],
            lambda m: _answers(m, str(command.event_id)), after=after, timeout=deps.settings.retrain_wait_seconds,
        )
        if result is None:
            raise HTTPException(504, "retrain still running; see GET /ai/models later")
        if isinstance(result, RetrainFailed):
            raise HTTPException(422, {"status": "error", "error_code": result.error_code.value,
                                      "message": result.message})
        assert isinstance(result, ModelTrained)
        return {
            "status": "success",
            "version_id": result.version_id,
            "training_samples": result.training_samples,
            "validation_samples": result.validation_samples,
            "train_accuracy": result.metrics.get("train_accuracy"),
            "validation_accuracy": result.metrics.get("validation_accuracy"),
            "train_mae": result.metrics.get("train_mae"),
            "validation_mae": result.metrics.get("validation_mae"),
            "model_path": result.artifact.path,
            "message": f"New model trained and saved. Activate via /ai/activate-model/{result.version_id}",
        }

    @api.get("/training-samples")
    async def training_samples(
        limit: Annotated[int, Query(ge=1, le=10_000)] = 50, outcome_known: bool | None = None
    ) -> dict[str, Any]:
        async with deps.sessions() as session:
            statement = select(TrainingSample).order_by(TrainingSample.timestamp.desc()).limit(limit)
            if outcome_known is not None:
                statement = statement.where(TrainingSample.outcome_known == outcome_known)
            rows = (await session.execute(statement)).scalars().all()
        samples = [
            {
                "id": r.id, "symbol": r.symbol, "timestamp": r.timestamp.isoformat().replace("+00:00", "Z"),
                "predicted_action": r.predicted_action, "prediction_confidence": r.prediction_confidence,
                "executed": r.executed, "execution_side": r.execution_side, "entry_price": r.entry_price,
                "exit_price": r.exit_price, "realized_pnl": r.realized_pnl, "target_label": r.target_label,
                "target_class": r.target_class, "outcome_known": r.outcome_known,
            }
            for r in rows
        ]
        return {"status": "ok", "count": len(samples), "samples": samples}

    @api.post("/rollback")
    async def rollback(slot: str, to_version: str | None = None, reason: str = "") -> dict[str, Any]:
        try:
            target_slot = Slot.from_key(slot)
        except ValueError as error:
            raise HTTPException(422, str(error)) from error
        event = await refused_as_http(challengers.rollback(deps, target_slot, to_version_id=to_version,
                                                           actor="http:admin", reason=reason or "rollback via API"))
        return {"status": "success", "slot": slot, "activated_version": event.version_id,
                "previous_version": event.previous_version_id, "epoch": event.epoch}

    @api.post("/shadow/{version_id}")
    async def start_shadow(version_id: str, reason: str = "") -> dict[str, Any]:
        event = await refused_as_http(challengers.add_challenger(deps, version_id, actor="http:admin", reason=reason))
        return {"status": "success", "slot": event.slot.key, "revision": event.revision,
                "challengers": [c.version_id for c in event.challengers]}

    @api.delete("/shadow/{version_id}")
    async def stop_shadow(version_id: str, reason: str = "") -> dict[str, Any]:
        event = await refused_as_http(challengers.remove_challenger(deps, version_id, actor="http:admin",
                                                                    reason=reason))
        return {"status": "success", "slot": event.slot.key, "revision": event.revision,
                "challengers": [c.version_id for c in event.challengers]}

    @api.post("/archive/{version_id}")
    async def archive(version_id: str, reason: str = "") -> dict[str, Any]:
        event = await refused_as_http(challengers.archive(deps, version_id, actor="http:admin", reason=reason))
        return {"status": "success", "archived_version": event.version_id, "slot": event.slot.key}

    @api.get("/decisions")
    async def decisions(slot: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        async with deps.sessions() as session:
            statement = select(PromotionDecision).order_by(PromotionDecision.id.desc()).limit(limit)
            if slot:
                statement = statement.where(PromotionDecision.slot_key == slot)
            rows = (await session.execute(statement)).scalars().all()
        return {"status": "ok", "count": len(rows), "decisions": [
            {"slot": r.slot_key, "policy": r.policy, "challenger": r.challenger_version_id,
             "champion": r.champion_version_id, "promoted": r.promoted, "stage": r.stage, "reason": r.reason,
             "numbers": r.numbers, "decided_at": r.decided_at.isoformat().replace("+00:00", "Z")} for r in rows]}

    @api.get("/history")
    async def activation_history(slot: str | None = None, at: datetime | None = None) -> dict[str, Any]:
        if at is not None:
            if slot is None:
                raise HTTPException(422, "`at` needs `slot`")
            moment = at if at.tzinfo else at.replace(tzinfo=UTC)
            row = await repository.champion_at(deps.sessions, slot, moment)
            return {"status": "ok", "slot": slot, "at": moment.isoformat(),
                    "champion": row.to_version_id if row else None, "epoch": row.epoch if row else None}
        rows = await repository.history(deps.sessions, slot)
        return {"status": "ok", "count": len(rows), "history": [
            {"slot": r.slot_key, "epoch": r.epoch, "from_version": r.from_version_id, "to_version": r.to_version_id,
             "actor": r.actor, "reason": r.reason, "policy": r.policy,
             "activated_at": r.activated_at.isoformat().replace("+00:00", "Z")} for r in rows]}

    return api


def _answers(message: object, command_event_id: str) -> bool:
    if isinstance(message, RetrainFailed):
        return str(message.command_event_id) == command_event_id
    if isinstance(message, ModelTrained):
        return message.lineage.get("command_event_id") == command_event_id
    return False

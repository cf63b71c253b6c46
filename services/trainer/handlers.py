"""Handle RetrainModel: one run per idempotency key, one run per slot at a time, training off the event loop.

Flow: start (or find) the run of the command's key → hold the slot (or coalesce into the run that
holds it) → configure the family (``invalid_parameters``) → load → fit in a thread → store the
bundle → reserve a version id → ModelTrained, or RetrainFailed with a machine-readable code.
A run found ``running`` belongs to a consumer that died: its command was reclaimed and this
replica finishes the same run (same run id, same version id), so one command yields one version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.trainer import slot_leases
from services.trainer.families.base import ModelFamily
from services.trainer.families.cnn_family import CnnFamily
from services.trainer.families.xgboost_family import XGBoostFamily, run_config
from services.trainer.pipeline import RetrainError
from services.trainer.progress import ProgressReporter
from services.trainer.runs import coalesce_run, finish_run, reserve_version_id, start_run
from services.trainer.settings import TrainerSettings
from shared.artifacts import ArtifactStore
from shared.messages import (
    Family,
    ModelTrained,
    RetrainErrorCode,
    RetrainFailed,
    RetrainModel,
    RetrainProgress,
    utc_now,
)
from shared.publishing import EventPublisher

log = logging.getLogger(__name__)

__all__ = ["FAMILIES", "TrainerDeps", "TrainerMetrics", "handle_retrain", "run_config"]

FAMILIES: dict[Family, ModelFamily] = {Family.XGBOOST: XGBoostFamily(), Family.CNN: CnnFamily()}
"""The families this trainer builds, by the slot's family."""


@dataclass(frozen=True)
class TrainerMetrics:
    """Trainer metrics."""

    runs: Counter
    stage_seconds: Histogram
    last_success: Gauge
    samples: Gauge
    validation: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None) -> TrainerMetrics:
        return cls(
            runs=Counter(
                "tradeloop_retrain_runs", "Retrain runs by outcome (succeeded, failed, coalesced).",
                ["family", "status", "error_code"], registry=registry,
            ),
            stage_seconds=Histogram(
                "tradeloop_retrain_stage_seconds", "Duration of retrain stages.", ["family", "stage"],
                buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
                registry=registry,
            ),
            last_success=Gauge(
                "tradeloop_retrain_last_success_timestamp_seconds", "Last successful retrain per slot.",
                ["slot"], registry=registry,
            ),
            samples=Gauge("tradeloop_retrain_samples", "Samples used by the newest version.", ["slot", "part"],
                          registry=registry),
            validation=Gauge("tradeloop_newest_version_metric", "Validation metrics of the newest version.",
                             ["slot", "metric"], registry=registry),
        )  # fmt: skip


@dataclass
class TrainerDeps:
    """What the retrain handler needs."""

    settings: TrainerSettings
    sessions: async_sessionmaker[AsyncSession]
    store: ArtifactStore
    publisher: EventPublisher
    metrics: TrainerMetrics
    families: dict[Family, ModelFamily] = field(default_factory=lambda: dict(FAMILIES))


async def handle_retrain(command: RetrainModel, *, key: str, deps: TrainerDeps) -> None:
    """Run (or finish, or re-announce, or coalesce) the retrain identified by ``key``."""
    run = await start_run(deps.sessions, command, key)
    if run.status == "succeeded" and run.result is not None:
        await deps.publisher.publish(ModelTrained.model_validate(run.result))  # a lost publish is repeated
        return
    if run.status in ("failed", "coalesced"):
        return
    if not run.created:
        log.warning("taking over run %s of a consumer that stopped", run.run_id)
    slot_key, family = command.slot.key, command.slot.family.value
    holder = await slot_leases.acquire(
        deps.sessions, slot_key, run.run_id, deps.settings.consumer_name, deps.settings.slot_stale_after
    )
    if holder != run.run_id:
        await _coalesce(command, key, run.run_id, holder, deps)
        return
    started = time.perf_counter()
    async with (
        slot_leases.heartbeat(deps.sessions, slot_key, run.run_id, deps.settings.lease_seconds),
        ProgressReporter(deps.publisher, run.run_id, command.slot) as progress,
    ):
        try:
            event, durations = await _train(command, key, run.run_id, deps, progress)
        except RetrainError as error:
            await _fail(command, run.run_id, error, {"total_seconds": time.perf_counter() - started}, deps)
            return
        durations["total_seconds"] = time.perf_counter() - started
        await finish_run(deps.sessions, run.run_id, status="succeeded", durations=durations,
                         result=event.model_dump(mode="json"))
        # one ModelTrained per run, even when a dead replica published it before recording success
        await deps.publisher.publish_once([(f"model-trained:{run.run_id}", event)])
    _observe_success(deps.metrics, event, durations)
    log.info("trained %s", event.version_id, extra={"run_id": run.run_id, "slot": slot_key, "family": family})


async def _train(
    command: RetrainModel, key: str, run_id: str, deps: TrainerDeps, progress: ProgressReporter
) -> tuple[ModelTrained, dict[str, float]]:
    slot = command.slot
    family = deps.families.get(slot.family)
    if family is None:
        raise RetrainError(RetrainErrorCode.UNSUPPORTED_FAMILY, f"family {slot.family} is not trained here")
    config = family.configure(command, deps.settings)
    clock = time.perf_counter()
    await progress.stage("loading", family=slot.family.value, requested_by=command.requested_by)
    data = await family.load(config, slot, deps.sessions, command.occurred_at)
    loaded = time.perf_counter()
    fitted = await asyncio.to_thread(family.fit, config, data, progress.report)
    trained = time.perf_counter()
    await progress.stage("saving", training_samples=fitted.training_samples,
                         validation_samples=fitted.validation_samples)
    ref = await asyncio.to_thread(deps.store.put_bundle, fitted.files, fitted.metadata)
    trained_at = utc_now()
    version_id = await reserve_version_id(deps.sessions, run_id, trained_at)
    event = ModelTrained(
        version_id=version_id,
        slot=slot,
        run_id=run_id,
        model_type=fitted.model_type,
        artifact=ref,
        feature_schema_hash=fitted.feature_schema_hash,
        trained_at=trained_at,
        training_samples=fitted.training_samples,
        validation_samples=fitted.validation_samples,
        metrics=fitted.metrics,
        params=fitted.params,
        lineage={**fitted.lineage, "requested_by": command.requested_by, "command_event_id": str(command.event_id),
                 "idempotency_key": key, "run_id": run_id},
    )
    durations = {**fitted.durations, "loading_seconds": loaded - clock, "training_seconds": trained - loaded,
                 "saving_seconds": time.perf_counter() - trained}
    await progress.stage("trained", version_id=version_id)
    return event, durations


async def _fail(
    command: RetrainModel, run_id: str, error: RetrainError, durations: dict[str, float], deps: TrainerDeps
) -> None:
    family = command.slot.family.value
    await finish_run(deps.sessions, run_id, status="failed", durations=durations,
                     error_code=error.code.value, error_message=str(error))
    deps.metrics.runs.labels(family, "failed", error.code.value).inc()
    deps.metrics.stage_seconds.labels(family, "total").observe(durations["total_seconds"])
    log.warning("retrain failed: %s", error, extra={"run_id": run_id, "error_code": error.code.value})
    await deps.publisher.publish(
        RetrainFailed(run_id=run_id, slot=command.slot, error_code=error.code, message=str(error),
                      command_event_id=command.event_id, details=error.details)
    )


async def _coalesce(command: RetrainModel, key: str, run_id: str, holder: str, deps: TrainerDeps) -> None:
    """The slot is training already: record this command as coalesced into that run and say so."""
    await coalesce_run(deps.sessions, run_id, into=holder)
    deps.metrics.runs.labels(command.slot.family.value, "coalesced", "").inc()
    log.info("coalesced into run %s", holder, extra={"run_id": run_id, "slot": command.slot.key})
    await deps.publisher.publish(
        RetrainProgress(run_id=run_id, slot=command.slot, stage="coalesced",
                        detail={"coalesced_into": holder, "command_event_id": str(command.event_id),
                                "idempotency_key": key, "requested_by": command.requested_by})
    )


def _observe_success(metrics: TrainerMetrics, event: ModelTrained, durations: dict[str, float]) -> None:
    family, slot = event.slot.family.value, event.slot.key
    metrics.runs.labels(family, "succeeded", "").inc()
    for stage, seconds in durations.items():
        metrics.stage_seconds.labels(family, stage.removesuffix("_seconds")).observe(seconds)
    metrics.last_success.labels(slot).set(event.trained_at.timestamp())
    metrics.samples.labels(slot, "train").set(event.training_samples)
    metrics.samples.labels(slot, "validation").set(event.validation_samples)
    for name, value in event.metrics.items():
        if value is not None:
            metrics.validation.labels(slot, name).set(value)

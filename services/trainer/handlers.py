"""Handle RetrainModel: one run per idempotency key, training off the event loop, ModelTrained or RetrainFailed."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.trainer.datasets import bootstrap_samples, load_candles
from services.trainer.families.xgboost import MODEL_TYPE, XGBoostParams
from services.trainer.pipeline import RetrainError, RunConfig, TrainedModel, train_xgboost
from services.trainer.runs import finish_run, reserve_version_id, start_run
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
from shared.ml.features import feature_schema_hash
from shared.publishing import EventPublisher

log = logging.getLogger(__name__)


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
                "tradeloop_retrain_runs", "Retrain runs by outcome.", ["family", "status", "error_code"],
                registry=registry,
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
        )


@dataclass
class TrainerDeps:
    """What the retrain handler needs."""

    settings: TrainerSettings
    sessions: async_sessionmaker[AsyncSession]
    store: ArtifactStore
    publisher: EventPublisher
    metrics: TrainerMetrics


def run_config(settings: TrainerSettings, command: RetrainModel) -> RunConfig:
    """Merge the command's overrides into the configured defaults."""
    o = command.overrides
    return RunConfig(
        min_samples=o.min_samples or settings.min_samples,
        window_days=o.window_days or settings.window_days,
        horizon=o.horizon or settings.horizon,
        validation_fraction=settings.validation_fraction,
        decision_threshold=settings.decision_threshold,
        params=XGBoostParams(
            num_boost_round=o.num_boost_round or settings.num_boost_round,
            max_depth=o.max_depth or settings.max_depth,
            learning_rate=o.learning_rate or settings.learning_rate,
            seed=settings.seed if o.seed is None else o.seed,
        ),
    )


async def handle_retrain(command: RetrainModel, *, key: str, deps: TrainerDeps) -> None:
    """Run (or finish, or re-announce) the retrain identified by ``key``."""
    run = await start_run(deps.sessions, command, key)
    if run.status == "succeeded" and run.result is not None:
        await deps.publisher.publish(ModelTrained.model_validate(run.result))  # a lost publish is repeated
        return
    if run.status == "failed":
        return
    if not run.created:
        log.warning("taking over run %s of a consumer that stopped", run.run_id)
    started = time.perf_counter()
    family = command.slot.family.value
    try:
        trained, event = await _train(command, run.run_id, deps)
    except RetrainError as error:
        durations = {"total_seconds": time.perf_counter() - started}
        await finish_run(deps.sessions, run.run_id, status="failed", durations=durations,
                         error_code=error.code.value, error_message=str(error))
        deps.metrics.runs.labels(family, "failed", error.code.value).inc()
        log.warning("retrain failed: %s", error, extra={"run_id": run.run_id, "error_code": error.code.value})
        await deps.publisher.publish(
            RetrainFailed(run_id=run.run_id, slot=command.slot, error_code=error.code, message=str(error),
                          command_event_id=command.event_id, details=error.details)
        )
        return
    durations = {**trained.durations, "total_seconds": time.perf_counter() - started}
    await finish_run(deps.sessions, run.run_id, status="succeeded", durations=durations,
                     result=event.model_dump(mode="json"))
    await deps.publisher.publish(event)
    _observe_success(deps.metrics, event, durations)
    log.info("trained %s", event.version_id, extra={"run_id": run.run_id, "slot": command.slot.key})


async def _train(command: RetrainModel, run_id: str, deps: TrainerDeps) -> tuple[TrainedModel, ModelTrained]:
    slot = command.slot
    if slot.family is not Family.XGBOOST:
        raise RetrainError(RetrainErrorCode.UNSUPPORTED_FAMILY, f"family {slot.family} is not trained here yet")
    config = run_config(deps.settings, command)
    await _progress(deps, run_id, command, "loading", window_days=config.window_days)
    candles, window_start = await load_candles(deps.sessions, slot.market, slot.timeframe, config.window_days)
    samples = bootstrap_samples(candles, window_start, config.horizon)
    await _progress(deps, run_id, command, "training", samples=samples.total)
    window = {"start": str(window_start), "end": str(candles["open_time"].iloc[-1]) if len(candles) else None,
              "window_days": config.window_days}
    try:
        trained = await asyncio.to_thread(train_xgboost, samples, config, window)
    except RetrainError:
        raise
    except Exception as error:
        raise RetrainError(RetrainErrorCode.TRAINING_ERROR, f"training failed: {error!r}") from error
    await _progress(deps, run_id, command, "saving")
    ref = await asyncio.to_thread(deps.store.put_bundle, trained.files, trained.metadata)
    trained_at = utc_now()
    version_id = await reserve_version_id(deps.sessions, run_id, trained_at)
    event = ModelTrained(
        version_id=version_id,
        slot=slot,
        run_id=run_id,
        model_type=MODEL_TYPE,
        artifact=ref,
        feature_schema_hash=feature_schema_hash(),
        trained_at=trained_at,
        training_samples=trained.training_samples,
        validation_samples=trained.validation_samples,
        metrics=trained.metrics,
        params={**config.params.booster_params(), "num_boost_round": config.params.num_boost_round,
                "horizon": config.horizon, "min_samples": config.min_samples,
                "decision_threshold": config.decision_threshold},
        lineage={**trained.lineage, "requested_by": command.requested_by, "command_event_id": str(command.event_id)},
    )
    return trained, event


async def _progress(deps: TrainerDeps, run_id: str, command: RetrainModel, stage: str, **detail: object) -> None:
    log.info("retrain stage %s", stage, extra={"run_id": run_id, "slot": command.slot.key, **detail})
    await deps.publisher.publish(RetrainProgress(run_id=run_id, slot=command.slot, stage=stage, detail=detail))


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

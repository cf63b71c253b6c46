"""Family 1 behind :class:`~services.trainer.families.base.ModelFamily`: XGBoost on closed-trade outcomes.

Data: the slot's closed trades of the last ``window_days`` (seed 003). Cold start: while the slot
has no closed trade at all, samples come from candle history instead (lineage ``bootstrap: true``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.trainer.datasets import Samples, bootstrap_samples, load_candles
from services.trainer.families.base import FitResult, Report
from services.trainer.families.xgboost import MODEL_TYPE, XGBoostParams
from services.trainer.outcomes import has_outcomes, load_outcome_samples
from services.trainer.pipeline import RetrainError, RunConfig, train_xgboost
from services.trainer.settings import TrainerSettings
from shared.messages import Family, RetrainErrorCode, RetrainModel, RetrainOverrides, Slot

CNN_ONLY = ("architecture", "sequence_length", "num_epochs", "batch_size", "perform_cross_validation",
            "cv_num_splits", "perform_backtesting")  # fmt: skip


def refuse_overrides(overrides: RetrainOverrides, names: tuple[str, ...], family: Family) -> None:
    """Raise invalid_parameters when ``overrides`` sets a field that ``family`` does not use."""
    foreign = sorted(name for name in names if getattr(overrides, name) is not None)
    if foreign:
        raise RetrainError(
            RetrainErrorCode.INVALID_PARAMETERS,
            f"overrides {', '.join(foreign)} do not apply to the {family.value} family",
            fields=foreign,
        )


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
            nthread=settings.xgboost_nthread,
        ),
    )


@dataclass(frozen=True)
class XGBoostJob:
    """The effective configuration of one XGBoost run."""

    run: RunConfig
    feature_schema: str


class XGBoostFamily:
    """Seed 003's continuous-learning regressor."""

    family = Family.XGBOOST

    def configure(self, command: RetrainModel, settings: TrainerSettings) -> XGBoostJob:
        refuse_overrides(command.overrides, CNN_ONLY, self.family)
        if command.slot.pattern:
            raise RetrainError(RetrainErrorCode.INVALID_PARAMETERS, "the xgboost family takes no pattern")
        return XGBoostJob(run=run_config(settings, command), feature_schema=settings.outcome_feature_schema)

    async def load(
        self, config: XGBoostJob, slot: Slot, sessions: async_sessionmaker[AsyncSession], until: datetime
    ) -> Samples:
        if await has_outcomes(sessions, slot.market, slot.timeframe):
            return await load_outcome_samples(
                sessions, slot.market, slot.timeframe,
                window_days=config.run.window_days, until=until, schema=config.feature_schema,
            )  # fmt: skip
        candles, window_start = await load_candles(sessions, slot.market, slot.timeframe, config.run.window_days)
        return bootstrap_samples(candles, window_start, config.run.horizon)

    def fit(self, config: XGBoostJob, data: Samples, report: Report) -> FitResult:
        report("training", {"samples": data.total, "source": data.source, "features": data.schema.feature_count})
        try:
            trained = train_xgboost(data, config.run)
        except RetrainError:
            raise
        except Exception as error:
            raise RetrainError(RetrainErrorCode.TRAINING_ERROR, f"training failed: {error!r}") from error
        run = config.run
        params: dict[str, Any] = {
            **run.params.booster_params(),
            "num_boost_round": run.params.num_boost_round,
            "horizon": run.horizon,
            "min_samples": run.min_samples,
            "window_days": run.window_days,
            "validation_fraction": run.validation_fraction,
            "decision_threshold": run.decision_threshold,
            "feature_schema": config.feature_schema,
        }
        return FitResult(
            model_type=MODEL_TYPE,
            files=trained.files,
            metadata=trained.metadata,
            metrics=trained.metrics,
            params=params,
            lineage=trained.lineage,
            feature_schema_hash=trained.feature_schema_hash,
            training_samples=trained.training_samples,
            validation_samples=trained.validation_samples,
            durations=trained.durations,
        )

"""Family 2 behind :class:`~services.trainer.families.base.ModelFamily`: the pattern CNN on candle windows (seed 000)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.trainer.backtest import BacktestConfig
from services.trainer.datasets import load_candles
from services.trainer.families.base import FitResult, Report
from services.trainer.families.cnn import CnnTrainConfig, CnnTrainingError, CnnTrainResult, train_cnn
from services.trainer.families.xgboost_family import refuse_overrides
from services.trainer.lineage import environment
from services.trainer.pipeline import RetrainError
from services.trainer.settings import TrainerSettings
from shared.messages import Family, RetrainErrorCode, RetrainModel, Slot
from shared.ml import cnn_model, patterns
from shared.ml.features import LOOKBACK
from shared.ml.labels import PatternLabelConfig

MODEL_TYPE = "cnn_pattern"
XGBOOST_ONLY = ("num_boost_round", "max_depth")


@dataclass(frozen=True)
class CnnJob:
    """The effective configuration of one CNN run."""

    train: CnnTrainConfig
    seed: int
    window_days: int
    backtest_start_date: datetime | None


@dataclass(frozen=True)
class CandleData:
    """Candles (ascending) and the window they were read for."""

    candles: pd.DataFrame
    window: dict[str, Any]


def _invalid(message: str) -> RetrainError:
    return RetrainError(RetrainErrorCode.INVALID_PARAMETERS, message)


class CnnFamily:
    """Seed 000's pattern CNN: one model per (market, timeframe, pattern)."""

    family = Family.CNN

    def configure(self, command: RetrainModel, settings: TrainerSettings) -> CnnJob:
        o, pattern = command.overrides, command.slot.pattern
        refuse_overrides(o, XGBOOST_ONLY, self.family)
        if pattern is None or pattern not in patterns.PATTERNS:
            raise _invalid(f"a cnn slot needs a known pattern ({', '.join(patterns.PATTERNS)}), got {pattern!r}")
        key = o.architecture or settings.cnn_architecture
        if key not in cnn_model.CNN_ARCHITECTURE_CONFIGS:
            raise _invalid(f"unknown architecture {key!r}; known: {', '.join(cnn_model.CNN_ARCHITECTURE_CONFIGS)}")
        label = PatternLabelConfig(o.horizon or settings.cnn_label_future_candles, settings.cnn_label_profit_pct,
                                   settings.cnn_label_loss_pct)
        backtest = BacktestConfig(
            entry_threshold=settings.backtest_entry_threshold,
            take_profit_pct=settings.backtest_take_profit_pct or label.profit_threshold_pct,
            stop_loss_pct=settings.backtest_stop_loss_pct or label.loss_threshold_pct,
            fee_pct=settings.backtest_fee_pct,
            max_holding_candles=settings.backtest_max_holding_candles or label.future_n_candles,
        )
        config = CnnTrainConfig(
            pattern=pattern,
            label=label,
            architecture_key=key,
            sequence_length=o.sequence_length or settings.cnn_sequence_length,
            num_epochs=o.num_epochs or settings.cnn_num_epochs,
            batch_size=o.batch_size or settings.cnn_batch_size,
            learning_rate=o.learning_rate or settings.cnn_learning_rate,
            pattern_windows_only=settings.cnn_pattern_windows_only,
            min_samples=o.min_samples or settings.cnn_min_samples,
            perform_cross_validation=_first(o.perform_cross_validation, settings.cnn_perform_cross_validation),
            cv_num_splits=o.cv_num_splits or settings.cnn_cv_num_splits,
            perform_backtesting=_first(o.perform_backtesting, settings.cnn_perform_backtesting),
            backtest=backtest,
        )
        if config.batch_size < 2:
            raise _invalid("batch_size must be at least 2 (batch norm needs two samples)")
        try:
            architecture = cnn_model.Architecture.from_config(cnn_model.CNN_ARCHITECTURE_CONFIGS[key])
            cnn_model.PatternCnn(architecture, len(cnn_model.CHANNEL_NAMES), config.sequence_length)
        except ValueError as error:
            raise _invalid(f"architecture {key!r} with sequence_length {config.sequence_length}: {error}") from error
        seed = settings.seed if o.seed is None else o.seed
        window_days = o.window_days or settings.cnn_window_days
        return CnnJob(train=config, seed=seed, window_days=window_days, backtest_start_date=settings.backtest_start_date)

    async def load(
        self, config: CnnJob, slot: Slot, sessions: async_sessionmaker[AsyncSession], until: datetime
    ) -> CandleData:
        extra = LOOKBACK + config.train.sequence_length
        candles, start = await load_candles(sessions, slot.market, slot.timeframe, config.window_days, extra)
        if candles.empty or start is None:
            raise RetrainError(RetrainErrorCode.NO_DATA, f"no {slot.timeframe} candles of {slot.market} stored")
        window = {"start": start.isoformat(), "end": pd.Timestamp(candles["open_time"].iloc[-1]).isoformat(),
                  "window_days": config.window_days, "candles": len(candles), "warmup_candles": extra}
        return CandleData(candles=candles.reset_index(drop=True), window=window)

    def fit(self, config: CnnJob, data: CandleData, report: Report) -> FitResult:
        times = pd.to_datetime(data.candles["open_time"], utc=True)
        train_config = config.train
        if config.backtest_start_date is not None:
            naive = times.dt.tz_localize(None).to_numpy("datetime64[ns]")
            start = int(np.searchsorted(naive, _naive_utc(config.backtest_start_date)))
            train_config = dataclasses.replace(train_config, backtest_from=start)
        num_epochs = train_config.num_epochs
        report("training", {"candles": len(data.candles), "pattern": train_config.pattern,
                            "architecture": train_config.architecture_key, "num_epochs": num_epochs})

        def on_epoch(epoch: int, train_loss: float, validation_loss: float) -> None:
            report("epoch", {"epoch": epoch, "num_epochs": num_epochs, "train_loss": train_loss,
                             "validation_loss": validation_loss})

        try:
            result = train_cnn(data.candles, train_config, config.seed, on_epoch=on_epoch, on_stage=report)
        except CnnTrainingError as error:
            raise RetrainError(error.code, str(error)) from error
        except ValueError as error:
            raise RetrainError(RetrainErrorCode.INVALID_PARAMETERS, str(error)) from error
        except Exception as error:
            raise RetrainError(RetrainErrorCode.TRAINING_ERROR, f"training failed: {error!r}") from error
        return FitResult(
            model_type=MODEL_TYPE,
            files=result.files,
            metadata=result.metadata,
            metrics=result.metrics,
            params=_params(train_config, config.seed),
            lineage=_lineage(result, data, times, config),
            feature_schema_hash=str(result.metadata["feature_schema_hash"]),
            training_samples=result.training_samples,
            validation_samples=result.validation_samples,
        )


def _naive_utc(moment: datetime) -> np.datetime64:
    stamp = pd.Timestamp(moment)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return np.datetime64(stamp.tz_localize(None).to_datetime64(), "ns")


def _first(value: bool | None, default: bool) -> bool:
    return default if value is None else value


def _params(config: CnnTrainConfig, seed: int) -> dict[str, Any]:
    params = dataclasses.asdict(config)
    params.pop("architectures")
    params["architecture"] = dict(cnn_model.CNN_ARCHITECTURE_CONFIGS[config.architecture_key])
    params["seed"] = seed
    return params


def _lineage(result: CnnTrainResult, data: CandleData, times: pd.Series, config: CnnJob) -> dict[str, Any]:
    def at(index: int) -> str:
        return str(pd.Timestamp(times.iloc[index]).isoformat())

    backtest: dict[str, Any] = {"performed": result.backtest is not None,
                                "requested_start": config.backtest_start_date.isoformat()
                                if config.backtest_start_date else None}
    if result.backtest_span is not None:
        backtest["period"] = [at(result.backtest_span[0]), at(result.backtest_span[1])]
        backtest["trades"] = result.backtest.number_of_trades if result.backtest else 0
    return {
        "source": "candles",
        "bootstrap": False,
        "window": data.window,
        "rows_fingerprint": result.data_fingerprint,
        "periods": {name: [at(first), at(last)] for name, (first, last) in result.split.items()},
        "purge": {"rule": "label horizon t+1..t+N ends before the next part's first window end",
                  "horizon_candles": config.train.label.future_n_candles},
        "samples_train": result.training_samples,
        "samples_validation": result.validation_samples,
        "samples_test": result.test_samples,
        "cross_validation": result.cross_validation,
        "epochs": [list(row) for row in result.history],
        "backtest": backtest,
        "seeds": {"torch": config.seed},
        **environment(),
    }

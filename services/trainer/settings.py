"""Settings of the trainer service (TRADELOOP_ prefix)."""

from __future__ import annotations

import re
from datetime import datetime

from croniter import croniter
from pydantic import Field, field_validator

from shared.messages import Slot
from shared.priority import CpuPolicy
from shared.settings import ServiceSettings, cpu_policy_field

_HASH = re.compile(r"^[0-9a-f]{64}$")


class TrainerSettings(ServiceSettings):
    """Training defaults; a RetrainModel command may override them per run."""

    service_name: str = "trainer"
    http_port: int = 8002
    # -- family 1: XGBoost on closed-trade outcomes (seed 003)
    min_samples: int = Field(default=100, ge=1, description="Fewer samples → insufficient_samples (seed 003).")
    window_days: int = Field(default=30, ge=1, description="Days of data to train on (seed 003).")
    horizon: int = Field(default=12, ge=1, description="Cold start: label = forward return over this many candles.")
    validation_fraction: float = Field(default=0.2, gt=0, lt=0.9, description="Newest share held out (80/20).")
    decision_threshold: float = Field(default=0.001, ge=0, description="|predicted return| above → BUY/SELL.")
    num_boost_round: int = Field(default=200, ge=1)
    max_depth: int = Field(default=4, ge=1, le=16)
    learning_rate: float = Field(default=0.05, gt=0, le=1)
    seed: int = Field(default=42, ge=0)
    cpu_policy: CpuPolicy = cpu_policy_field("batch")  # throughput work: never preempt inference
    xgboost_nthread: int = Field(default=1, ge=1, le=256, description="XGBoost threads per fit.")
    outcome_feature_schema: str = Field(
        default="serving",
        description="Feature schema outcome samples must carry: 'serving' (shared.ml.features), 'newest' "
        "(the newest sample's, looked up in feature_schemas) or a registered schema's sha256.",
    )
    # -- family 2: CNN on candle windows (seed 000)
    cnn_window_days: int = Field(default=180, ge=1, description="Days of candles a CNN trains on.")
    cnn_min_samples: int = Field(default=200, ge=1)
    cnn_architecture: str = Field(default="default_simple", description="Key of cnn_architecture_configs.")
    cnn_sequence_length: int = Field(default=30, ge=4, le=1024)
    cnn_num_epochs: int = Field(default=10, ge=1, le=1000)
    cnn_batch_size: int = Field(default=32, ge=2, le=65_536)
    cnn_learning_rate: float = Field(default=1e-3, gt=0, le=1)
    cnn_pattern_windows_only: bool = False
    cnn_perform_cross_validation: bool = True
    cnn_cv_num_splits: int = Field(default=3, ge=2, le=20)
    cnn_perform_backtesting: bool = True
    cnn_label_future_candles: int = Field(default=10, ge=1, description="First-touch label horizon (candles).")
    cnn_label_profit_pct: float = Field(default=2.0, gt=0, lt=1000)
    cnn_label_loss_pct: float = Field(default=1.0, gt=0, lt=100)
    backtest_start_date: datetime | None = Field(
        default=None, description="Backtest from here (clamped to the out-of-sample test part); default its start."
    )
    backtest_entry_threshold: float = Field(default=0.5, ge=0, le=1)
    backtest_take_profit_pct: float | None = Field(default=None, gt=0, description="Default: the label's profit %.")
    backtest_stop_loss_pct: float | None = Field(default=None, gt=0, lt=100, description="Default: the label's loss %.")
    backtest_fee_pct: float = Field(default=0.25, ge=0, lt=10)
    backtest_max_holding_candles: int | None = Field(default=None, ge=1, description="Default: the label horizon.")
    # -- runs, leases, schedule
    lease_seconds: float = Field(default=5.0, gt=0, description="How often a running command's lease is renewed.")
    slot_stale_seconds: float | None = Field(
        default=None, gt=0, description="A slot lease not renewed for this long is free (default 4 x lease_seconds)."
    )
    retrain_enabled: bool = Field(default=True, description="Publish scheduled RetrainModel commands.")
    retrain_cron: str = Field(default="0 3 * * *", description="UTC cron (5 fields, or 6 with seconds last).")
    retrain_slots: str = Field(
        default="", description="Slots to retrain on schedule, e.g. 'xgboost:BTC-EUR:1h,cnn:ETH-EUR:1h:bullFlag'."
    )
    retrain_misfire_grace_seconds: float = Field(
        default=3600.0, ge=0, description="At start, a tick missed by at most this long is still published."
    )

    @field_validator("retrain_cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"invalid cron expression {value!r}")
        return value

    @field_validator("retrain_slots")
    @classmethod
    def _valid_slots(cls, value: str) -> str:
        for key in _split_slots(value):
            Slot.from_key(key)
        return value

    @field_validator("outcome_feature_schema")
    @classmethod
    def _valid_schema(cls, value: str) -> str:
        if value not in ("serving", "newest") and not _HASH.match(value):
            raise ValueError("expected 'serving', 'newest' or a 64-hex sha256")
        return value

    @property
    def scheduled_slots(self) -> list[Slot]:
        """The slots of ``retrain_slots``, in order, without duplicates."""
        slots = [Slot.from_key(key) for key in _split_slots(self.retrain_slots)]
        return list(dict.fromkeys(slots))

    @property
    def slot_stale_after(self) -> float:
        """Seconds after which an un-renewed slot lease may be taken over."""
        return self.slot_stale_seconds or 4.0 * self.lease_seconds


def _split_slots(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]

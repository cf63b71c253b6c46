"""Message schemas: one pydantic model per stream, commands as orders, events in the past tense.

Every message carries ``event_id``, ``occurred_at`` (UTC) and ``schema_version``. Readers are
tolerant (unknown fields are ignored) so producers can roll forward first. Non-Python clients may
publish a command with plain ``XADD <stream> * __data__ '<json>'``; see docs/messages.md.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shared.streams import Stream


def utc_now() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware (UTC)")
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_require_utc)]
"""A timezone-aware datetime, normalised to UTC; naive values are refused."""


class Family(StrEnum):
    """Model families the trainer can build and inference can serve."""

    XGBOOST = "xgboost"
    """Gradient-boosted trees on tabular features, predicting % return (seed 003)."""
    CNN = "cnn"
    """PyTorch 1-D CNN on candle windows, classifying a chart pattern's outcome (seed 000)."""


class Action(StrEnum):
    """A prediction's trading action."""

    BUY = "BUY"
    SELL = "SELL"
    HOLD = "HOLD"


TIMEFRAMES: tuple[str, ...] = ("1m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")
"""Candle intervals, spelled as Bitvavo spells them."""


def timeframe_seconds(timeframe: str) -> int:
    """Return the length of ``timeframe`` in seconds (``"1h"`` → 3600)."""
    units = {"m": 60, "h": 3600, "d": 86400}
    if timeframe not in TIMEFRAMES:
        raise ValueError(f"unknown timeframe {timeframe!r}; expected one of {', '.join(TIMEFRAMES)}")
    return int(timeframe[:-1]) * units[timeframe[-1]]


def _check_timeframe(value: str) -> str:
    timeframe_seconds(value)
    return value


Timeframe = Annotated[str, AfterValidator(_check_timeframe)]
Market = Annotated[str, Field(pattern=r"^[A-Z0-9]{1,12}-[A-Z0-9]{1,12}$", examples=["BTC-EUR"])]


class Slot(BaseModel):
    """What a model serves: (family, market, timeframe[, pattern]). One champion per slot."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    family: Family = Field(default=Family.XGBOOST, description="Model family.")
    market: Market = Field(description="Bitvavo market, e.g. BTC-EUR.")
    timeframe: Timeframe = Field(description="Candle interval, e.g. 1h.")
    pattern: str | None = Field(default=None, description="Chart pattern (CNN family only).")

    @property
    def key(self) -> str:
        """Return the slot's stable string key, e.g. ``xgboost:BTC-EUR:1h``."""
        parts = [self.family.value, self.market, self.timeframe]
        if self.pattern:
            parts.append(self.pattern)
        return ":".join(parts)

    @classmethod
    def from_key(cls, key: str) -> Slot:
        """Parse a key made by :attr:`key`."""
        parts = key.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"bad slot key {key!r}")
        return cls(
            family=Family(parts[0]),
            market=parts[1],
            timeframe=parts[2],
            pattern=parts[3] if len(parts) == 4 else None,
        )


class Message(BaseModel):
    """Envelope fields every message carries."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4, description="Unique id of this message.")
    occurred_at: UtcDatetime = Field(default_factory=utc_now, description="When it happened (UTC).")
    schema_version: int = Field(default=1, description="Version of this message's schema.")


# ---------------------------------------------------------------- market data


class CandleClosed(Message):
    """A candle closed and was stored; published once per (market, timeframe, open_time)."""

    market: Market
    timeframe: Timeframe
    open_time: UtcDatetime = Field(description="Start of the candle's interval (UTC).")
    open: float = Field(gt=0)
    high: float = Field(gt=0)
    low: float = Field(gt=0)
    close: float = Field(gt=0)
    volume: float = Field(ge=0)
    source: str = Field(default="unknown", description="Where the candle came from.")


# ---------------------------------------------------------------- training


class RetrainOverrides(BaseModel):
    """Per-run overrides of the trainer's configured defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_samples: int | None = Field(default=None, ge=1, description="Minimum samples (default 100).")
    window_days: int | None = Field(default=None, ge=1, description="Days of data to train on (default 30).")
    horizon: int | None = Field(default=None, ge=1, description="Label horizon in candles.")
    num_boost_round: int | None = Field(default=None, ge=1, le=10_000)
    max_depth: int | None = Field(default=None, ge=1, le=16)
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0)
    architecture: str | None = Field(default=None, description="CNN: key of cnn_architecture_configs.")
    sequence_length: int | None = Field(default=None, ge=4, le=1024, description="CNN: candles per window.")
    num_epochs: int | None = Field(default=None, ge=1, le=1000, description="CNN: training epochs.")
    batch_size: int | None = Field(default=None, ge=1, le=65_536, description="CNN: batch size.")
    perform_cross_validation: bool | None = Field(default=None, description="CNN: run time-series CV.")
    cv_num_splits: int | None = Field(default=None, ge=2, le=20, description="CNN: CV folds.")
    perform_backtesting: bool | None = Field(default=None, description="CNN: backtest out of sample.")


class RetrainModel(Message):
    """Order: train a new version for a slot."""

    slot: Slot
    overrides: RetrainOverrides = Field(default_factory=RetrainOverrides)
    requested_by: str = Field(default="unknown", description="Who asked: cli:user, http, scheduler, ...")
    idempotency_key: str | None = Field(
        default=None, max_length=200, description="Same key twice → one run. Defaults to the stream entry."
    )


class RetrainProgress(Message):
    """A retrain run reached a stage."""

    run_id: str
    slot: Slot
    stage: str
    detail: dict[str, Any] = Field(default_factory=dict)


class RetrainErrorCode(StrEnum):
    """Why a retrain failed (seed 003's codes first)."""

    INSUFFICIENT_SAMPLES = "insufficient_samples"
    TOO_FEW_VALID_SAMPLES = "too_few_valid_samples"
    NO_DATA = "no_data"
    UNSUPPORTED_FAMILY = "unsupported_family"
    INVALID_PARAMETERS = "invalid_parameters"
    TRAINING_ERROR = "training_error"


class RetrainFailed(Message):
    """A retrain run failed; ``error_code`` is machine-readable."""

    run_id: str
    slot: Slot
    error_code: RetrainErrorCode
    message: str
    command_event_id: uuid.UUID | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class ArtifactRef(BaseModel):
    """Where a version's artifact lives: a manifest addressed by its sha256."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    path: str = Field(description="Manifest path relative to the artifact store root.")
    size: int = Field(ge=0)


class ModelTrained(Message):
    """A new immutable version was trained and stored. The trainer never activates it."""

    version_id: str = Field(pattern=r"^v\d{8}_\d{6}(_[0-9a-z]+)?$")
    slot: Slot
    run_id: str
    model_type: str
    artifact: ArtifactRef
    feature_schema_hash: str
    trained_at: UtcDatetime
    training_samples: int = Field(ge=0)
    validation_samples: int = Field(ge=0)
    metrics: dict[str, float | None] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------- registry


class ActivateModel(Message):
    """Order: make ``version_id`` the champion of its slot."""

    version_id: str
    requested_by: str = "unknown"
    reason: str = ""
    expected_slot: str | None = Field(default=None, description="Refuse if the version's slot differs.")


class ModelActivated(Message):
    """A version became champion. ``epoch`` grows by one per activation of the slot."""

    slot: Slot
    version_id: str
    previous_version_id: str | None
    epoch: int = Field(ge=1)
    artifact: ArtifactRef
    feature_schema_hash: str
    actor: str
    reason: str
    policy: str = "manual"


class ActivationRejected(Message):
    """The registry refused an activation; nothing changed."""

    version_id: str
    reason: str
    command_event_id: uuid.UUID


# ---------------------------------------------------------------- inference


class ModelSwapped(Message):
    """An inference replica now serves the version (hot swap, no restart)."""

    replica: str
    slot: Slot
    version_id: str
    epoch: int
    load_seconds: float
    activation_to_swap_seconds: float


class ModelActivationFailed(Message):
    """A replica could not load an activated version and keeps serving the old one."""

    replica: str
    slot: Slot
    version_id: str
    epoch: int
    kept_version_id: str | None
    error: str


class PredictionMade(Message):
    """A model version's prediction for a closed candle."""

    prediction_id: uuid.UUID
    slot: Slot
    version_id: str
    market: Market
    timeframe: Timeframe
    candle_open_time: UtcDatetime
    action: Action
    confidence: float = Field(ge=0, le=1)
    predicted_return: float
    shadow: bool = False
    stale: bool = Field(default=False, description="The champion is older than the configured expiry.")
    candle_event_id: uuid.UUID | None = None


# ---------------------------------------------------------------- registry: rollback, shadow, archive


class RollbackModel(Message):
    """Order: make the previous champion of ``slot`` (or ``to_version_id``) champion again."""

    slot: Slot
    to_version_id: str | None = Field(default=None, description="Named target; default: the previous champion.")
    requested_by: str = "unknown"
    reason: str = ""


class AddChallenger(Message):
    """Order: run ``version_id`` in shadow next to its slot's champion."""

    version_id: str
    requested_by: str = "unknown"
    reason: str = ""


class RemoveChallenger(Message):
    """Order: stop running ``version_id`` in shadow."""

    version_id: str
    requested_by: str = "unknown"
    reason: str = ""


class ArchiveModel(Message):
    """Order: archive a version (never champion or challenger again; its artifact is kept)."""

    version_id: str
    requested_by: str = "unknown"
    reason: str = ""


class ChallengerRef(BaseModel):
    """A challenger as inference needs it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    version_id: str
    artifact: ArtifactRef
    feature_schema_hash: str


class ChallengersChanged(Message):
    """The set of shadow challengers of a slot changed; ``revision`` grows by one per change."""

    slot: Slot
    challengers: list[ChallengerRef]
    revision: int = Field(ge=1)
    actor: str
    reason: str


class ModelArchived(Message):
    """A version was archived."""

    version_id: str
    slot: Slot
    actor: str
    reason: str


class CommandRejected(Message):
    """A registry command was refused; nothing changed."""

    command: str
    command_event_id: uuid.UUID
    reason: str


class PromotionDecided(Message):
    """The promotion policy judged a challenger against the champion (promoted or not), with its numbers."""

    slot: Slot
    policy: str
    challenger_version_id: str
    champion_version_id: str | None
    promoted: bool
    reason: str
    numbers: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------- trade outcomes


class TradeExecuted(Message):
    """The user's bot executed a trade on a prediction."""

    prediction_id: uuid.UUID
    market: Market
    side: Literal["BUY", "SELL"]
    entry_price: float = Field(gt=0)
    quantity: float = Field(gt=0)
    executed_at: UtcDatetime
    fee: float = Field(default=0.0, ge=0, description="Fee paid on entry, in quote currency.")


class TradeClosed(Message):
    """The user's bot closed the position opened on a prediction."""

    prediction_id: uuid.UUID
    exit_price: float = Field(gt=0)
    closed_at: UtcDatetime
    fee: float = Field(default=0.0, ge=0, description="Fee paid on exit, in quote currency.")


class TradeOutcomeRecorded(Message):
    """A prediction's trade closed: realised P&L and labels are stored as a training sample."""

    prediction_id: uuid.UUID
    version_id: str | None
    slot: Slot | None
    market: Market
    predicted_action: Action
    side: Literal["BUY", "SELL"]
    realized_pnl: float
    target_label: float = Field(description="% return after fees, as a fraction (0.0111 = 1.11 %).")
    target_class: Literal["WIN", "LOSS", "NEUTRAL"]
    candle_open_time: UtcDatetime | None = None


STREAM_MESSAGES: dict[Stream, type[Message]] = {
    Stream.CANDLE_CLOSED: CandleClosed,
    Stream.RETRAIN_MODEL: RetrainModel,
    Stream.RETRAIN_PROGRESS: RetrainProgress,
    Stream.RETRAIN_FAILED: RetrainFailed,
    Stream.MODEL_TRAINED: ModelTrained,
    Stream.ACTIVATE_MODEL: ActivateModel,
    Stream.MODEL_ACTIVATED: ModelActivated,
    Stream.ACTIVATION_REJECTED: ActivationRejected,
    Stream.MODEL_SWAPPED: ModelSwapped,
    Stream.MODEL_ACTIVATION_FAILED: ModelActivationFailed,
    Stream.PREDICTION_MADE: PredictionMade,
    Stream.ROLLBACK_MODEL: RollbackModel,
    Stream.ADD_CHALLENGER: AddChallenger,
    Stream.REMOVE_CHALLENGER: RemoveChallenger,
    Stream.ARCHIVE_MODEL: ArchiveModel,
    Stream.CHALLENGERS_CHANGED: ChallengersChanged,
    Stream.MODEL_ARCHIVED: ModelArchived,
    Stream.COMMAND_REJECTED: CommandRejected,
    Stream.PROMOTION_DECIDED: PromotionDecided,
    Stream.TRADE_EXECUTED: TradeExecuted,
    Stream.TRADE_CLOSED: TradeClosed,
    Stream.TRADE_OUTCOME_RECORDED: TradeOutcomeRecorded,
}
"""The one message type each stream carries."""


_STREAM_OF: dict[type[Message], Stream] = {message_type: stream for stream, message_type in STREAM_MESSAGES.items()}


def stream_of(message: Message | type[Message]) -> Stream:
    """Return the stream a message type is published on."""
    cls = message if isinstance(message, type) else type(message)
    try:
        return _STREAM_OF[cls]
    except KeyError:
        raise KeyError(f"{cls.__name__} has no stream") from None


ModelStatus = Literal["ready", "archived", "failed"]

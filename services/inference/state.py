"""What one inference replica holds: settings, connections, served slots, candle windows and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.inference.loader import LoaderProcess
from services.inference.model_slot import ModelSlot
from services.inference.settings import InferenceSettings
from services.inference.windows import CandleWindows
from shared.artifacts import ArtifactStore
from shared.messages import Slot
from shared.publishing import EventPublisher

if TYPE_CHECKING:
    from services.inference.writer import PredictionWriter

FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class InferenceMetrics:
    """Inference metrics."""

    predictions: Counter
    predict_seconds: Histogram
    candle_to_prediction: Histogram
    skipped: Counter
    swaps: Counter
    swap_failures: Counter
    swap_seconds: Histogram
    champion: Gauge
    shadow_predictions: Counter
    shadow_seconds: Histogram
    stale_predictions: Counter
    challengers: Gauge
    challenger_failures: Counter
    batch_candles: Histogram
    write_seconds: Histogram
    write_failures: Counter
    loads_in_process: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None) -> InferenceMetrics:
        return cls(
            predictions=Counter("tradeloop_predictions", "Champion predictions published.",
                                ["slot", "version", "action"], registry=registry),
            predict_seconds=Histogram("tradeloop_predict_seconds",
                                      "Features + champion predict per candle and slot (amortised over a batch).",
                                      buckets=FAST_BUCKETS, registry=registry),
            candle_to_prediction=Histogram(
                "tradeloop_candle_to_prediction_seconds", "CandleClosed published → PredictionMade published.",
                buckets=FAST_BUCKETS, registry=registry),
            skipped=Counter("tradeloop_candles_without_prediction", "Candles not predicted, by reason.", ["reason"],
                            registry=registry),
            swaps=Counter("tradeloop_model_swaps", "Hot swaps done.", ["slot"], registry=registry),
            swap_failures=Counter("tradeloop_model_swap_failures", "Activations that failed to load.", ["slot"],
                                  registry=registry),
            swap_seconds=Histogram("tradeloop_model_swap_seconds", "Load + verify + warm-up duration.",
                                   buckets=FAST_BUCKETS, registry=registry),
            champion=Gauge("tradeloop_served_champion", "1 for the version served per slot.", ["slot", "version"],
                           registry=registry),
            shadow_predictions=Counter("tradeloop_shadow_predictions", "Shadow (challenger) predictions published.",
                                       ["slot", "version"], registry=registry),
            shadow_seconds=Histogram("tradeloop_shadow_seconds",
                                     "Challenger predictions of one batch, after the champion's were published.",
                                     buckets=FAST_BUCKETS, registry=registry),
            stale_predictions=Counter("tradeloop_stale_predictions",
                                      "Champion predictions flagged stale (champion older than the expiry).",
                                      ["slot", "version"], registry=registry),
            challengers=Gauge("tradeloop_served_challengers", "Challengers served in shadow per slot.", ["slot"],
                              registry=registry),
            challenger_failures=Counter("tradeloop_challenger_load_failures", "Challengers that failed to load.",
                                        ["slot"], registry=registry),
            batch_candles=Histogram("tradeloop_inference_batch_candles", "Candles per batch read from the stream.",
                                    buckets=BATCH_BUCKETS, registry=registry),
            write_seconds=Histogram("tradeloop_prediction_write_seconds",
                                    "Storing a batch of prediction rows (one transaction) and acking its candles.",
                                    buckets=FAST_BUCKETS, registry=registry),
            write_failures=Counter("tradeloop_prediction_write_failures",
                                   "Batches whose rows could not be stored (their candles stay pending).",
                                   registry=registry),
            loads_in_process=Counter(
                "tradeloop_model_loads_in_process",
                "Versions the loader child left to the service: no checked forest (not_prepared), the child "
                "failed or hung (loader_failed, then restarted), or its answer was unusable (unusable_answer).",
                ["reason"], registry=registry),
        )


@dataclass
class InferenceState:
    """Everything one inference replica serves."""

    settings: InferenceSettings
    sessions: async_sessionmaker[AsyncSession]
    store: ArtifactStore
    publisher: EventPublisher
    metrics: InferenceMetrics
    windows: CandleWindows
    slots: dict[str, ModelSlot] = field(default_factory=dict)
    writer: PredictionWriter | None = None
    """Finishes batches in the background (shadows, rows, ack); None: finish inline."""
    loader: LoaderProcess | None = None
    """Loads and checks versions in a child process; None: in this process."""

    @property
    def replica(self) -> str:
        return self.settings.consumer_name

    def serves_market(self, market: str) -> bool:
        return not self.settings.markets or market in self.settings.markets

    def slot_for(self, slot: Slot) -> ModelSlot:
        if slot.key not in self.slots:
            self.slots[slot.key] = ModelSlot(slot, self.store, self.loader)
        return self.slots[slot.key]

    def champions_for(self, market: str, timeframe: str) -> list[ModelSlot]:
        """Slots of (market, timeframe) that have a champion."""
        return [s for s in self.slots.values()
                if s.current is not None and s.slot.market == market and s.slot.timeframe == timeframe]

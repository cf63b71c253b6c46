"""Settings of the inference service (TRADELOOP_ prefix)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings
from shared.settings_types import CsvList


class InferenceSettings(ServiceSettings):
    """Which slots to serve, how often to reconcile, when a champion counts as stale, how much to batch."""

    service_name: str = "inference"
    http_port: int = 8003
    markets: CsvList = Field(default=[], description="Serve only these markets (empty = every slot with a champion).")
    reconcile_seconds: float = Field(default=30.0, gt=0, description="Safety-net check of champions in the database.")
    champion_max_age_hours: float | None = Field(
        default=None, gt=0,
        description="Predictions of a champion activated longer ago than this carry stale=True (unset = never).")
    candle_batch_size: int = Field(
        default=100, ge=1, le=1000, description="Most candles read (XREADGROUP COUNT) and predicted in one batch.")
    write_linger_ms: float = Field(
        default=20.0, ge=0, le=1000,
        description="How long predicted batches gather before their rows are stored and their candles acked.")
    pending_writes: int = Field(
        default=64, ge=1,
        description="Batches whose rows may wait for the background writer before reading more candles waits.")
    load_in_child: bool = Field(
        default=True,
        description="Load and check versions in a loader child process (at a lower CPU priority), so that a "
                    "load shares neither the GIL nor the CPU priority of the candle loop; false: a worker thread.")
    loader_niceness: int = Field(default=10, ge=0, le=19, description="The loader child's nice increment.")
    loader_timeout_seconds: float = Field(
        default=60.0, gt=0, description="Longest wait for the loader child per version; then it is restarted "
                                        "and the version loads in process.")

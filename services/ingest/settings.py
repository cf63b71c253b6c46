"""Settings of the ingest service (TRADELOOP_ prefix)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from shared.messages import timeframe_seconds
from shared.settings import ServiceSettings
from shared.settings_types import CsvList


class IngestSettings(ServiceSettings):
    """What to ingest and from where."""

    service_name: str = "ingest"
    http_port: int = 8001
    markets: CsvList = Field(default=["BTC-EUR"], description="Markets (seed 000: data_fetch_pairs).")
    timeframes: CsvList = Field(default=["1m"], description="Intervals (seed 000: data_fetch_timeframes).")
    source: Literal["synthetic", "csv"] = Field(default="synthetic", description="Where candles come from.")
    synthetic_seed: int = Field(default=7, description="Seed of the synthetic price process.")
    synthetic_anchor: datetime = Field(
        default=datetime(2026, 1, 1, tzinfo=UTC), description="Virtual 'now' of the synthetic source at start."
    )
    history_candles: int = Field(default=1500, ge=0, description="Synthetic history before the anchor.")
    clock_speed: float = Field(default=1.0, gt=0, description="Virtual seconds per wall second (synthetic live).")
    live: bool = Field(default=True, description="Keep polling for newly closed candles after the backfill.")
    poll_seconds: float = Field(default=1.0, gt=0, description="Live poll interval (wall seconds).")
    csv_path: Path | None = Field(default=None, description="CSV file for source=csv.")
    batch_size: int = Field(default=1440, ge=1, le=10_000, description="Candles per store/publish batch.")

    @field_validator("timeframes")
    @classmethod
    def _check_timeframes(cls, value: list[str]) -> list[str]:
        for timeframe in value:
            timeframe_seconds(timeframe)
        return value

    @field_validator("synthetic_anchor")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

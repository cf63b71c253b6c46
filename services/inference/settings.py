"""Settings of the inference service (TRADELOOP_ prefix)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings
from shared.settings_types import CsvList


class InferenceSettings(ServiceSettings):
    """Which slots to serve and how often to reconcile with the registry's database."""

    service_name: str = "inference"
    http_port: int = 8003
    markets: CsvList = Field(default=[], description="Serve only these markets (empty = every slot with a champion).")
    reconcile_seconds: float = Field(default=30.0, gt=0, description="Safety-net check of champions in the database.")

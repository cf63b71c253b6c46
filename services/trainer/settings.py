"""Settings of the trainer service (TRADELOOP_ prefix)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class TrainerSettings(ServiceSettings):
    """Training defaults; a RetrainModel command may override them per run."""

    service_name: str = "trainer"
    http_port: int = 8002
    min_samples: int = Field(default=100, ge=1, description="Fewer samples → insufficient_samples (seed 003).")
    window_days: int = Field(default=30, ge=1, description="Days of data to train on (seed 003).")
    horizon: int = Field(default=12, ge=1, description="Label: forward return over this many candles.")
    validation_fraction: float = Field(default=0.2, gt=0, lt=0.9, description="Newest share held out (80/20).")
    decision_threshold: float = Field(default=0.001, ge=0, description="|predicted return| above → BUY/SELL.")
    num_boost_round: int = Field(default=200, ge=1)
    max_depth: int = Field(default=4, ge=1, le=16)
    learning_rate: float = Field(default=0.05, gt=0, le=1)
    seed: int = Field(default=42, ge=0)
    lease_seconds: float = Field(default=5.0, gt=0, description="How often a running command's lease is renewed.")

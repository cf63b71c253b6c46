"""Settings of the registry service (TRADELOOP_ prefix)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from shared.priority import CpuPolicy
from shared.settings import ServiceSettings, cpu_policy_field

KNOWN_EXAMPLE_TOKENS = frozenset(
    {"live-admin-token", "admin", "admin-token", "changeme", "change-me", "secret", "token", "password",
     "example", "test", "default"}
)
"""Tokens from documentation (seed 003's ``live-admin-token`` first): never accepted."""

Policy = Literal["manual", "newest", "champion_challenger"]


class PolicyConfig(BaseModel):
    """How a slot's new versions become champion."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: Policy = "manual"
    metric: str = Field(default="validation_accuracy", description="Validation metric to compare (higher wins).")
    margin: float = Field(default=0.01, ge=0, description="Challenger must beat the champion by this much.")
    min_validation_samples: int = Field(default=100, ge=1, description="Fewer validation samples → not promoted.")
    max_drawdown_worsening: float = Field(
        default=0.05, ge=0, description="Backtest max drawdown may be at most this much worse (when both have one)."
    )
    shadow: bool = Field(default=True, description="Run the challenger in shadow and test it on live outcomes.")
    shadow_min_outcomes: int = Field(default=30, ge=5, description="K: paired live outcomes before the test.")
    significance: float = Field(default=0.05, gt=0, lt=1, description="Wilcoxon signed-rank one-sided p-value.")


class RegistrySettings(ServiceSettings):
    """Registry and admin API settings."""

    service_name: str = "registry"
    http_port: int = 8000
    admin_token: SecretStr = Field(description="X-Admin-Token for the admin API; required, ≥ 16 characters.")
    promotion_policy: Policy = Field(
        default="manual", description="Default policy: manual (seed 003), newest (seed 000) or champion_challenger."
    )
    slot_policies: dict[str, PolicyConfig] = Field(
        default_factory=dict, description='Per-slot policy, JSON: {"xgboost:BTC-EUR:1h": {"policy": "newest"}}.'
    )
    guard_enabled: bool = Field(default=False, description="Roll back a champion whose live accuracy decays.")
    guard_window: int = Field(default=50, ge=5, description="N: the champion's last N live outcomes.")
    guard_min_accuracy: float = Field(default=0.55, ge=0, le=1, description="Below this (seed 003: 55 %) → rollback.")
    default_market: str = Field(default="BTC-EUR", description="Slot market when an API call names none.")
    default_timeframe: str = Field(default="1m", description="Slot timeframe when an API call names none.")
    retrain_wait_seconds: float = Field(default=120.0, gt=0, description="POST /ai/retrain waits this long.")
    cpu_policy: CpuPolicy = cpu_policy_field("batch")  # throughput work: never preempt inference
    verify_niceness: int = Field(
        default=10, ge=0, le=19,
        description="Nice value added to the thread that loads a version to check it (Linux; 0: as the service).")

    @field_validator("admin_token")
    @classmethod
    def _refuse_weak_tokens(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value()
        if token.strip().lower() in KNOWN_EXAMPLE_TOKENS:
            raise ValueError("TRADELOOP_ADMIN_TOKEN is a published example value; set a secret of your own")
        if len(token) < 16:
            raise ValueError("TRADELOOP_ADMIN_TOKEN must be at least 16 characters")
        return value


def policy_for(settings: RegistrySettings, slot_key: str) -> PolicyConfig:
    """The promotion policy configured for ``slot_key``."""
    return settings.slot_policies.get(slot_key) or PolicyConfig(policy=settings.promotion_policy)

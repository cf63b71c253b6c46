"""Settings of the registry service (TRADELOOP_ prefix)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from shared.settings import ServiceSettings

KNOWN_EXAMPLE_TOKENS = frozenset(
    {"live-admin-token", "admin", "admin-token", "changeme", "change-me", "secret", "token", "password",
     "example", "test", "default"}
)
"""Tokens from documentation (seed 003's ``live-admin-token`` first): never accepted."""

Policy = Literal["manual", "newest"]


class RegistrySettings(ServiceSettings):
    """Registry and admin API settings."""

    service_name: str = "registry"
    http_port: int = 8000
    admin_token: SecretStr = Field(description="X-Admin-Token for the admin API; required, ≥ 16 characters.")
    promotion_policy: Policy = Field(
        default="manual", description="manual (seed 003: never auto-activate) or newest (seed 000)."
    )
    default_market: str = Field(default="BTC-EUR", description="Slot market when an API call names none.")
    default_timeframe: str = Field(default="1m", description="Slot timeframe when an API call names none.")
    retrain_wait_seconds: float = Field(default=120.0, gt=0, description="POST /ai/retrain waits this long.")

    @field_validator("admin_token")
    @classmethod
    def _refuse_weak_tokens(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value()
        if token.strip().lower() in KNOWN_EXAMPLE_TOKENS:
            raise ValueError("TRADELOOP_ADMIN_TOKEN is a published example value; set a secret of your own")
        if len(token) < 16:
            raise ValueError("TRADELOOP_ADMIN_TOKEN must be at least 16 characters")
        return value

"""Typed settings, one class per service, read once from the environment (and .env).

Every variable has the ``TRADELOOP_`` prefix; ``REDIS_URL`` and ``DATABASE_URL`` are also read
without it. Values are validated at start and frozen; nothing else reads ``os.environ``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.priority import CpuPolicy
from shared.streams import consumer_name


def normalise_database_url(url: str) -> str:
    """Return ``url`` with an async driver (``postgresql://`` → ``postgresql+asyncpg://``)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url


def cpu_policy_field(default: CpuPolicy) -> Any:
    """The ``cpu_policy`` setting (TRADELOOP_CPU_POLICY) with a service's default."""
    return Field(default=default, description="normal, or batch (Linux SCHED_BATCH: a fair CPU share, but waking "
                 "up does not preempt a running process, so this service's wake-ups do not cut into inference's "
                 "candles).")


class ServiceSettings(BaseSettings):
    """Settings every service shares."""

    model_config = SettingsConfigDict(
        env_prefix="TRADELOOP_",
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    service_name: str = Field(default="tradeloop", description="Name in logs, metrics and consumer names.")
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("TRADELOOP_REDIS_URL", "REDIS_URL", "redis_url"),
        description="Redis holding the streams.",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TRADELOOP_DATABASE_URL", "DATABASE_URL", "database_url"),
        description="SQLAlchemy URL; unset → embedded SQLite file under data_dir.",
    )
    data_dir: Path = Field(default=Path("var"), description="Where embedded state lives (SQLite, artifacts).")
    artifact_dir: Path | None = Field(default=None, description="Artifact store root; default data_dir/artifacts.")
    http_host: str = Field(default="127.0.0.1", description="Address of the health/metrics HTTP server.")
    http_port: int = Field(default=0, ge=0, le=65535, description="Port of the HTTP server (0 = any free).")
    log_level: str = Field(default="INFO", description="Python log level.")
    log_json: bool = Field(default=False, description="Log JSON lines instead of text.")
    log_file: Path | None = Field(
        default=None, description="Also log to this rotating file (10 MB x 5); {service} is replaced by the name."
    )
    stream_health_seconds: float = Field(
        default=5.0, gt=0, description="Refresh interval of the stream health gauges (length, lag, pending)."
    )
    max_deliveries: int = Field(default=5, ge=1, description="Deliveries before a message is dead-lettered.")
    reclaim_idle_ms: int = Field(default=30_000, ge=100, description="Idle time before a pending message is reclaimed.")
    reclaim_poll_ms: int = Field(default=1_000, ge=10, description="Reclaimer poll interval.")
    stream_block_ms: int = Field(
        default=2_000, ge=10, le=4_000,
        description="BLOCK of subscribers' XREADGROUP/XREAD: how long an idle read waits before it asks again "
                    "(a new entry ends the wait at once, so this costs no latency; 100 ms had every subscriber "
                    "poll 10 times a second). Keep it below the Redis client's socket timeout.",
    )
    consumer: str | None = Field(default=None, description="Consumer name; default unique per process.")
    cpu_policy: CpuPolicy = cpu_policy_field("normal")

    @field_validator("database_url")
    @classmethod
    def _normalise_db(cls, value: str | None) -> str | None:
        return normalise_database_url(value) if value else None

    @property
    def effective_database_url(self) -> str:
        """The database URL to connect to (embedded SQLite when none is configured)."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'tradeloop.db').resolve()}"

    @property
    def effective_artifact_dir(self) -> Path:
        """The artifact store root."""
        return (self.artifact_dir or self.data_dir / "artifacts").resolve()

    @property
    def consumer_name(self) -> str:
        """This process's consumer name in every group it joins."""
        return self.consumer or consumer_name(self.service_name)


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def load_settings(cls: type[SettingsT]) -> SettingsT:
    """Read ``cls`` from the environment; on invalid configuration exit with a clear message (code 2)."""
    try:
        return cls()
    except ValidationError as error:
        lines = [f"  {'.'.join(map(str, e['loc'])) or cls.__name__}: {e['msg']}" for e in error.errors()]
        sys.stderr.write(f"tradeloop: invalid configuration ({cls.__name__}):\n" + "\n".join(lines) + "\n")
        raise SystemExit(2) from None

"""Settings of the ingest service (TRADELOOP_ prefix), like seed 000's ParamsManager.

Precedence: constructor arguments > environment > ``.env`` > config file > defaults. The config
file (``TRADELOOP_CONFIG_FILE``: TOML, YAML or JSON; an ``[ingest]`` section or top-level keys)
accepts the field names and seed 000's names (``data_fetch_pairs``, ``data_fetch_timeframes``,
``data_fetch_start_date_str``, ``data_fetch_end_date_str``); relative paths in it are resolved
against the file's directory.
"""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml  # type: ignore[import-untyped]
from pydantic import Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from shared.messages import timeframe_seconds
from shared.settings import ServiceSettings
from shared.settings_types import CsvList

DEFAULT_EXCHANGE_URL = "https://api.bitvavo.com/v2"
SEED_NAMES = {
    "data_fetch_pairs": "markets",
    "data_fetch_timeframes": "timeframes",
    "data_fetch_start_date_str": "data_fetch_start_date",
    "data_fetch_end_date_str": "data_fetch_end_date",
    "market_regimes": "market_regimes_file",
}
_PATH_FIELDS = ("market_regimes_file", "csv_path")


def read_config_file(path: Path) -> dict[str, Any]:
    """Read an ingest config file (TOML/YAML/JSON) into field names; seed 000's names are translated."""
    suffix = path.suffix.lower()
    if suffix not in {".toml", ".yaml", ".yml", ".json"}:
        raise ValueError(f"{path}: config file must be .toml, .yaml, .yml or .json")
    text = path.read_text()
    if suffix == ".toml":
        raw: Any = tomllib.loads(text)
    elif suffix in {".yaml", ".yml"}:
        raw = yaml.safe_load(text) or {}
    else:
        raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    section = raw.get("ingest", raw)
    if not isinstance(section, dict):
        raise ValueError(f"{path}: [ingest] must be a mapping")
    values: dict[str, Any] = {SEED_NAMES.get(str(key), str(key)): value for key, value in section.items()}
    for name in _PATH_FIELDS:
        if isinstance(values.get(name), str) and values[name] and not Path(values[name]).is_absolute():
            values[name] = str((path.parent / values[name]).resolve())
    return values


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values from the file named by ``config_file`` (found in the higher-priority sources)."""

    def __init__(self, settings_cls: type[BaseSettings], *sources: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._sources = sources

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        for source in self._sources:
            path = source().get("config_file")
            if path:
                return read_config_file(Path(path))
        return {}


class IngestSettings(ServiceSettings):
    """What to ingest, from where, and how trade outcomes are labelled."""

    service_name: str = "ingest"
    http_port: int = 8001
    config_file: Path | None = Field(default=None, description="TOML/YAML/JSON file with these settings.")
    markets: CsvList = Field(default=["BTC-EUR"], description="Markets (seed 000: data_fetch_pairs).")
    timeframes: CsvList = Field(default=["1m"], description="Intervals (seed 000: data_fetch_timeframes).")
    source: Literal["synthetic", "csv", "bitvavo"] = Field(
        default="synthetic", description="Where candles come from: synthetic, csv, or bitvavo (the exchange or the sim)."
    )
    data_fetch_start_date: datetime | None = Field(
        default=None, description="First candle to fetch (UTC); empty = history_candles before now."
    )
    data_fetch_end_date: datetime | None = Field(
        default=None, description="Fetch candles opening before this (UTC); empty = now, and keep following."
    )
    market_regimes_file: Path | None = Field(
        default=None, description="market_regimes.json: per market, named regimes, each a list of periods."
    )
    exchange_url: str = Field(default=DEFAULT_EXCHANGE_URL, description="Bitvavo RESTURL (or the sim's URL).")
    exchange_api_key: SecretStr | None = Field(default=None, description="Bitvavo API key (optional).")
    exchange_api_secret: SecretStr | None = Field(default=None, description="Bitvavo API secret (optional).")
    api_token: SecretStr | None = Field(
        default=None, description="If set, the HTTP routes (/trades/*, /ingest/*) require it as X-Api-Token."
    )
    exchange_rate_limit: int = Field(default=1000, ge=1, description="Request weight per minute (Bitvavo: 1000).")
    exchange_rate_reserve: int = Field(default=50, ge=0, description="Weight per minute left for other callers.")
    exchange_timeout_seconds: float = Field(default=10.0, gt=0, description="HTTP timeout per request.")
    prefetch_pages: int = Field(default=2, ge=1, le=16, description="Pages fetched ahead of the database per series.")
    lock_seconds: float = Field(default=30.0, gt=0, description="TTL of a replica's lock on a (market, interval).")
    settle_seconds: float = Field(
        default=0.2, ge=0, description="Wall seconds after an interval boundary before fetching the closed candle."
    )
    confirm_intervals: int = Field(
        default=1, ge=0, description="An empty newest interval counts as fetched only once this many intervals old."
    )
    synthetic_seed: int = Field(default=7, description="Seed of the synthetic price process.")
    synthetic_anchor: datetime = Field(
        default=datetime(2026, 1, 1, tzinfo=UTC), description="Virtual 'now' of the synthetic source at start."
    )
    history_candles: int = Field(default=1500, ge=0, description="Candles of history before now (default range).")
    clock_speed: float = Field(
        default=1.0, gt=0, description="Virtual seconds per wall second (synthetic source; the sim's --speed)."
    )
    live: bool = Field(default=True, description="Keep polling for newly closed candles after the backfill.")
    poll_seconds: float = Field(default=1.0, gt=0, description="Live poll interval (wall seconds, synthetic/csv).")
    csv_path: Path | None = Field(default=None, description="CSV file for source=csv.")
    batch_size: int = Field(default=1440, ge=1, le=10_000, description="Candles per store/publish batch.")
    neutral_band: float = Field(
        default=0.001, ge=0, lt=1, description="|return| at or below this is NEUTRAL, above WIN/LOSS (fraction)."
    )
    outcome_wait_seconds: float = Field(
        default=3600.0, gt=0, description="How long a trade event waits for its prediction or other half."
    )
    outcome_sweep_seconds: float = Field(default=5.0, gt=0, description="How often pending trade events are retried.")
    fills_poll_seconds: float = Field(
        default=60.0, gt=0, description="Account fill import interval (only with exchange API keys)."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = _ConfigFileSource(settings_cls, init_settings, env_settings, dotenv_settings)
        return init_settings, env_settings, dotenv_settings, config_file, file_secret_settings

    @field_validator("timeframes")
    @classmethod
    def _check_timeframes(cls, value: list[str]) -> list[str]:
        for timeframe in value:
            timeframe_seconds(timeframe)
        return value

    @field_validator("data_fetch_start_date", "data_fetch_end_date", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("synthetic_anchor", "data_fetch_start_date", "data_fetch_end_date")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)

    @property
    def has_exchange_keys(self) -> bool:
        """Whether exchange API keys are configured (account fills can be imported)."""
        return self.exchange_api_key is not None and self.exchange_api_secret is not None

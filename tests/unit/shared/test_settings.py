"""Settings: URL normalisation, the admin token guard, list parsing from the environment."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.ingest.settings import IngestSettings
from services.registry.settings import RegistrySettings
from shared.settings import ServiceSettings, load_settings, normalise_database_url


def test_database_url_gets_the_async_driver() -> None:
    assert normalise_database_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalise_database_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalise_database_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"


def test_embedded_sqlite_when_no_database_url(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("TRADELOOP_DATABASE_URL", raising=False)
    settings = ServiceSettings(data_dir=tmp_path)
    assert settings.effective_database_url.startswith("sqlite+aiosqlite:///")


@pytest.mark.parametrize("token", ["live-admin-token", "LIVE-ADMIN-TOKEN", "changeme", "short"])
def test_registry_refuses_example_or_weak_tokens(token: str) -> None:
    with pytest.raises(ValidationError):
        RegistrySettings(admin_token=token)


def test_registry_refuses_to_start_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRADELOOP_ADMIN_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        load_settings(RegistrySettings)
    assert exit_info.value.code == 2


def test_registry_accepts_a_real_secret() -> None:
    assert RegistrySettings(admin_token="k3Jq9-3r8Fz0vLw2x").admin_token.get_secret_value()


def test_lists_come_from_comma_separated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADELOOP_MARKETS", "BTC-EUR, ETH-EUR")
    monkeypatch.setenv("TRADELOOP_TIMEFRAMES", "1m,1h")
    settings = IngestSettings()
    assert settings.markets == ["BTC-EUR", "ETH-EUR"]
    assert settings.timeframes == ["1m", "1h"]
    monkeypatch.setenv("TRADELOOP_TIMEFRAMES", "7m")
    with pytest.raises(ValidationError):
        IngestSettings()

"""Ingest settings: a config file like seed 000's ParamsManager, overridden by the environment."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.ingest.settings import IngestSettings, read_config_file


def test_config_files_accept_seed_names_in_toml_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(
        '[ingest]\ndata_fetch_pairs = ["BTC-EUR", "ETH-EUR"]\ndata_fetch_timeframes = ["1h"]\n'
        'data_fetch_start_date_str = "2025-01-01"\ndata_fetch_end_date_str = ""\n'
        'market_regimes_file = "market_regimes.json"\n'
    )
    (tmp_path / "b.yaml").write_text("markets: [SOL-EUR]\ntimeframes: [5m, 1h]\nneutral_band: 0.002\n")
    (tmp_path / "c.json").write_text(json.dumps({"data_fetch_pairs": ["XRP-EUR"]}))
    toml = read_config_file(tmp_path / "a.toml")
    assert toml["markets"] == ["BTC-EUR", "ETH-EUR"] and toml["data_fetch_end_date"] == ""
    assert toml["market_regimes_file"] == str(tmp_path / "market_regimes.json")
    assert read_config_file(tmp_path / "b.yaml")["neutral_band"] == 0.002
    assert read_config_file(tmp_path / "c.json") == {"markets": ["XRP-EUR"]}
    with pytest.raises(ValueError, match="must be"):
        read_config_file(tmp_path / "a.ini")


def test_the_environment_overrides_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ingest.toml"
    path.write_text('data_fetch_pairs = ["BTC-EUR", "ETH-EUR"]\ndata_fetch_timeframes = ["1h"]\n'
                    'data_fetch_start_date_str = "2025-01-01"\nsource = "bitvavo"\n')
    monkeypatch.setenv("TRADELOOP_CONFIG_FILE", str(path))
    monkeypatch.setenv("TRADELOOP_TIMEFRAMES", "15m,4h")
    settings = IngestSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.markets == ["BTC-EUR", "ETH-EUR"] and settings.timeframes == ["15m", "4h"]
    assert settings.data_fetch_start_date == datetime(2025, 1, 1, tzinfo=UTC) and settings.data_fetch_end_date is None
    assert settings.source == "bitvavo" and not settings.has_exchange_keys
    monkeypatch.setenv("TRADELOOP_TIMEFRAMES", "7m")
    with pytest.raises(ValueError, match="unknown timeframe"):
        IngestSettings(_env_file=None)  # type: ignore[call-arg]

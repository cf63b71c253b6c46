"""``tradeloop sim-exchange`` serves the sim at an accelerated clock; ``import-candles`` is wired."""

from __future__ import annotations

import re
import threading
import time

import pytest
import requests

from shared.cli.ingest_commands import sim_exchange
from shared.cli.main import _parser
from shared.settings import ServiceSettings


def test_sim_exchange_serves_an_accelerated_bitvavo(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["sim-exchange", "--port", "0", "--speed", "600", "--start", "2026-01-01T00:00:00Z",
                                 "--markets", "BTC-EUR"])
    stop = threading.Event()
    server = threading.Thread(target=sim_exchange, args=(ServiceSettings(), args, stop), daemon=True)
    server.start()
    try:
        deadline = time.monotonic() + 5
        while not (match := re.search(r"(http://\S+/v2)", capsys.readouterr().out)):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        url = match.group(1)
        first = requests.get(f"{url}/time", timeout=5).json()["time"]
        time.sleep(0.2)
        second = requests.get(f"{url}/time", timeout=5).json()["time"]
        assert 60_000 <= second - first <= 240_000  # 0.2 s of wall time is ~2 virtual minutes
        candles = requests.get(f"{url}/BTC-EUR/candles", params={"interval": "1m", "limit": 5}, timeout=5).json()
        assert candles and all(row[0] + 60_000 <= second for row in candles)
    finally:
        stop.set()
        server.join(timeout=5)


def test_import_candles_is_a_subcommand() -> None:
    args = _parser().parse_args(["import-candles", "h.csv", "--market", "BTC-EUR", "--timeframe", "1h", "--no-publish"])
    assert args.command == "import-candles" and args.no_publish and callable(args.run)

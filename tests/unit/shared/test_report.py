"""``tradeloop report``: SVG charts, every section (with data or saying why not), the CLI on SQLite."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.cli.charts import Band, Marker, Series, drawdown, line_chart, nice_ticks, time_ticks, timeline_chart
from shared.cli.main import main
from shared.cli.report import (
    SECTIONS,
    Activation,
    ChallengerChange,
    ReportData,
    Score,
    SlotData,
    VersionInfo,
    render,
)
from shared.db.migrate import upgrade
from shared.db.models import ActivationHistory, ModelVersion, Prediction, SlotChampion, VersionStats
from shared.db.models_registry import LiveScore
from shared.db.session import make_engine, make_sessionmaker

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()
KEY = "cnn:BTC-EUR:1h:bull_flag"


def points(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'data-points="(\d+)"', html)]


def sections(html: str) -> dict[str, str]:
    """data-section → its HTML (sections do not nest)."""
    found = re.findall(r'<section id="[^"]+" data-section="(\w+)">(.*?)</section>', html, re.S)
    return dict(found)


def test_ticks_and_drawdown() -> None:
    assert nice_ticks(0, 1) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert len(nice_ticks(-3.2, 17.9)) <= 7
    labels = [label for _, label in time_ticks(T0, T0 + 3600)]
    assert labels[0] == "12:00" and len(labels) <= 7
    assert drawdown([1.0, 1.2, 0.9, 1.3], relative=True) == pytest.approx([0, 0, -0.25, 0])
    assert drawdown([0.0, 5.0, 2.0, 1.0], relative=False) == [0.0, 0.0, -3.0, -4.0]


def test_charts_are_svg_with_their_point_count_and_nothing_for_no_data() -> None:
    chart = line_chart([Series("a", [T0, T0 + 60], [1.0, 2.0], "#123456", step=True),
                        Series("b", [T0 + 30], [float("nan")], "#654321")], title="t", y_label="y")
    assert chart.startswith('<figure class="chart" data-points="2">') and "<svg" in chart and "<path" in chart
    assert line_chart([Series("a", [], [], "#000")], title="t", y_label="y") == ""
    timeline = timeline_chart(["v1"], [Band("v1", T0, T0 + 60, "#000", "reign")], [Marker("v1", T0, "trained", "#000")],
                              title="t", events=[(T0, "epoch 1")])
    assert 'data-points="2"' in timeline and "<rect" in timeline
    assert timeline_chart([], [], [], title="t") == ""


def _version(n: int, **extra: Any) -> VersionInfo:
    return VersionInfo(version_id=f"v{n}", trained_at=T0 + n * 600, registered_at=None, model_type="cnn",
                       status="ready", training_samples=900, validation_samples=100, validation_accuracy=0.6,
                       validation_mae=0.01, metrics=extra.pop("metrics", {}), lineage=extra.pop("lineage", {}),
                       **extra)


def test_render_shows_every_section_with_data() -> None:
    curve = [1.0, 1.05, 0.98, 1.1, 1.2]
    backtest = {"backtest_total_return": 0.2, "backtest_max_drawdown": 0.067, "backtest_win_rate": 0.5,
                "backtest_number_of_trades": 4.0, "backtest_profit_factor": 2.0}
    slot = SlotData(
        key=KEY,
        versions=[_version(1, metrics={**backtest, "backtest_equity_curve": curve}),
                  _version(2, metrics=backtest, lineage={"backtest": {"equity_curve": curve[::-1]}}),
                  _version(3, metrics=backtest, live_total=2, live_correct=1, live_pnl=4.0)],
        champion=("v3", 2, T0 + 3000),
        activations=[Activation(1, T0 + 700, None, "v1", "cli", "manual", "first"),
                     Activation(2, T0 + 3000, "v1", "v3", "cli", "manual", "better <b>")],
        challenger_changes=[ChallengerChange(1, "v2", "add", T0 + 1300, "cli", ""),
                            ChallengerChange(2, "v2", "remove", T0 + 2000, "cli", "")],
        scores=[Score("o1", "v3", False, T0 + 3100, 5.0, True), Score("o1", "v2", True, T0 + 3100, -2.0, False),
                Score("o2", "v3", False, T0 + 3200, -1.0, False), Score("o2", "v2", True, T0 + 3200, 3.0, True)],
        prediction_range=(T0 + 700, T0 + 3600),
        prediction_buckets={("v1", False): [3] * 30 + [0] * 30, ("v3", False): [0] * 30 + [2] * 30},
        action_mix={("v1", False): {"BUY": 60, "HOLD": 30}, ("v3", False): {"SELL": 60}},
    )
    html = render(ReportData(generated_at=T0 + 3600, slots=[slot], database="postgresql+asyncpg://u:***@h/db"))
    found = sections(html)
    assert list(found) == list(SECTIONS)
    for name in ("versions", "predictions", "accuracy", "pnl", "shadow", "backtests"):
        assert points(found[name]) and min(points(found[name])) > 0, name
    assert "better &lt;b&gt;" in html and "<b>" not in found["activations"]  # escaped
    assert "No equity curve stored for v3" in found["backtests"]
    assert found["backtests"].count("<figure") == 2  # equity + drawdown, from metrics and from lineage
    assert 'tag champion' in found["versions"] and 'tag archived' not in found["versions"]


def test_render_says_what_is_missing() -> None:
    slot = SlotData(key="xgboost:ETH-EUR:1m", versions=[_version(1)])
    html = render(ReportData(generated_at=T0, slots=[slot], database="sqlite"))
    found = sections(html)
    assert "No version has been activated" in found["activations"]
    assert "No predictions recorded" in found["predictions"]
    assert "No trade outcome has been scored" in found["accuracy"]
    assert "No shadow challenger" in found["shadow"]
    assert "No version of this slot carries backtest metrics" in found["backtests"]
    assert "No slot has a trained version" in render(ReportData(generated_at=T0, slots=[], database="sqlite"))


def test_tradeloop_report_on_the_embedded_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("TRADELOOP_DATABASE_URL", raising=False)
    monkeypatch.setenv("TRADELOOP_DATA_DIR", str(tmp_path))
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    async def seed() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'tradeloop.db'}")
        try:
            await upgrade(engine)
            async with make_sessionmaker(engine)() as session, session.begin():
                for n in (1, 2):
                    session.add(ModelVersion(
                        version_id=f"v{n}", slot_key="xgboost:BTC-EUR:1m", family="xgboost", market="BTC-EUR",
                        timeframe="1m", model_type="xgboost_continuous", run_id=f"r{n}",
                        trained_at=start + timedelta(minutes=n), training_samples=100, validation_samples=20,
                        validation_accuracy=0.55, validation_mae=0.01, metrics={}, params={}, lineage={},
                        artifact_path="x", artifact_sha256="0" * 64, artifact_size=1, feature_schema_hash="h"))
                    session.add(VersionStats(version_id=f"v{n}", total_predictions=1, correct_predictions=n - 1,
                                             total_pnl=float(n)))
                    session.add(ActivationHistory(slot_key="xgboost:BTC-EUR:1m", epoch=n, to_version_id=f"v{n}",
                                                  actor="t", policy="manual", activated_at=start + timedelta(minutes=n)))
                    for m in range(5):
                        session.add(Prediction(
                            prediction_id=f"p{n}{m}", slot_key="xgboost:BTC-EUR:1m", version_id=f"v{n}",
                            market="BTC-EUR", timeframe="1m", candle_open_time=start + timedelta(minutes=10 * n + m),
                            action="BUY", confidence=0.6, predicted_return=0.01, features=np.zeros(2, np.float32),
                            created_at=start + timedelta(minutes=10 * n + m)))
                    session.add(LiveScore(outcome_prediction_id=f"p{n}0", version_id=f"v{n}",
                                          slot_key="xgboost:BTC-EUR:1m", shadow=False, action="BUY", trade_return=0.01,
                                          pnl=float(n), correct=n == 2, scored_at=start + timedelta(minutes=30 + n)))
                session.add(SlotChampion(slot_key="xgboost:BTC-EUR:1m", version_id="v2", epoch=2,
                                         activated_at=start + timedelta(minutes=2)))
        finally:
            await engine.dispose()

    asyncio.run(seed())
    out = tmp_path / "out" / "report.html"
    assert main(["report", "--out", str(out), "--slot", "xgboost:BTC-EUR:1m"]) == 0
    assert "1 slot(s)" in capsys.readouterr().out
    html = out.read_text()
    found = sections(html)
    assert list(found) == list(SECTIONS)
    for name in ("versions", "predictions", "accuracy", "pnl"):
        assert points(found[name]) and min(points(found[name])) > 0, name
    assert main(["report", "--out", str(out), "--slot", "cnn:ETH-EUR:1h"]) == 0
    assert "No slot has a trained version" in out.read_text()

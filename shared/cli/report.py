"""``tradeloop report``: one self-contained HTML page about the models, per slot.

What it shows, and where it comes from (read only; nothing is written to the database):

* versions over time: when each was trained, its champion reigns and shadow runs, archiving
  (``model_versions``, ``activation_history``, ``challenger_history``, ``archived_versions``);
* activation history: every champion change with actor, policy and reason;
* predictions per minute per version and the action mix (``predictions``);
* live accuracy and cumulative P&L per version, and its drawdown (``live_scores``, totals from
  ``version_stats``), realised trade outcomes (``training_samples``);
* shadow challengers against the champion on the same outcomes, and promotion decisions
  (``live_scores`` with ``shadow``, ``promotion_decisions``);
* backtests: the ``backtest_*`` statistics of ``model_versions.metrics`` (CNN versions trained with
  backtesting) and, when a version stores one, its equity curve and drawdown
  (``metrics["backtest_equity_curve"]`` or ``lineage["backtest"]["equity_curve"]``).

Charts are inline SVG (:mod:`shared.cli.charts`); a section without data says so.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.cli.charts import Band, Marker, Series, color_for, drawdown, line_chart, number, percent, timeline_chart
from shared.db.models import ActivationHistory, ModelVersion, Prediction, SlotChampion, TrainingSample, VersionStats
from shared.db.models_registry import ArchivedVersion, ChallengerHistory, LiveScore, PromotionDecision
from shared.db.session import make_engine, make_sessionmaker
from shared.settings import ServiceSettings

PREDICTION_BUCKETS = 60
SECTIONS = ("versions", "activations", "predictions", "accuracy", "pnl", "shadow", "backtests")
"""The sections every slot gets, in order (``data-section`` attributes)."""
BACKTEST_STATS = (
    ("backtest_total_return", "total return", percent),
    ("backtest_max_drawdown", "max drawdown", percent),
    ("backtest_win_rate", "win rate", percent),
    ("backtest_number_of_trades", "trades", lambda v: f"{v:.0f}"),
    ("backtest_profit_factor", "profit factor", number),
    ("backtest_sharpe_per_trade", "Sharpe per trade", number),
    ("backtest_sharpe_per_bar", "Sharpe per candle", number),
)


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _when(value: float | None) -> str:
    if value is None:
        return "–"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# --------------------------------------------------------------------------- data


@dataclass
class VersionInfo:
    """One version with its live totals."""

    version_id: str
    trained_at: float
    registered_at: float | None
    model_type: str
    status: str
    training_samples: int
    validation_samples: int
    validation_accuracy: float | None
    validation_mae: float | None
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    archived_at: float | None = None
    live_total: int = 0
    live_correct: int = 0
    live_pnl: float = 0.0

    @property
    def equity_curve(self) -> list[float] | None:
        """The stored backtest equity curve, if the version has one."""
        curve = self.metrics.get("backtest_equity_curve")
        backtest = self.lineage.get("backtest")
        if curve is None and isinstance(backtest, dict):
            curve = backtest.get("equity_curve")
        if isinstance(curve, list) and curve and all(isinstance(v, int | float) for v in curve):
            return [float(v) for v in curve]
        return None

    @property
    def backtest_stats(self) -> dict[str, float | None]:
        return {k: v for k, v in self.metrics.items() if k.startswith("backtest_") and not isinstance(v, list)}


@dataclass
class Activation:
    epoch: int
    at: float
    from_version: str | None
    to_version: str
    actor: str
    policy: str
    reason: str


@dataclass
class ChallengerChange:
    revision: int
    version_id: str
    action: str
    at: float
    actor: str
    reason: str


@dataclass
class Score:
    outcome_id: str
    version_id: str
    shadow: bool
    at: float
    pnl: float
    correct: bool | None


@dataclass
class Outcome:
    version_id: str
    at: float
    pnl: float | None
    target_class: str | None


@dataclass
class Decision:
    at: float
    policy: str
    challenger: str
    champion: str | None
    promoted: bool
    stage: str
    reason: str


@dataclass
class SlotData:
    """Everything the report shows about one slot."""

    key: str
    versions: list[VersionInfo] = field(default_factory=list)
    champion: tuple[str, int, float] | None = None
    activations: list[Activation] = field(default_factory=list)
    challenger_changes: list[ChallengerChange] = field(default_factory=list)
    scores: list[Score] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    prediction_range: tuple[float, float] | None = None
    prediction_buckets: dict[tuple[str, bool], list[int]] = field(default_factory=dict)
    action_mix: dict[tuple[str, bool], dict[str, int]] = field(default_factory=dict)

    @property
    def predictions(self) -> int:
        return sum(sum(mix.values()) for mix in self.action_mix.values())


@dataclass
class ReportData:
    generated_at: float
    slots: list[SlotData]
    database: str


async def load(sessions: async_sessionmaker[AsyncSession], slot: str | None = None) -> list[SlotData]:
    """Read every slot (or only ``slot``) from the database."""
    slots: dict[str, SlotData] = {}

    def of(key: str) -> SlotData:
        if key not in slots:
            slots[key] = SlotData(key)
        return slots[key]

    def only(column: Any) -> Any:
        return column == slot if slot else True

    async with sessions() as session:
        archived = dict((await session.execute(select(ArchivedVersion.version_id, ArchivedVersion.archived_at))).all())
        stats = {s.version_id: s for s in (await session.execute(select(VersionStats))).scalars()}
        versions = (await session.execute(
            select(ModelVersion).where(only(ModelVersion.slot_key)).order_by(ModelVersion.trained_at))).scalars()
        owner: dict[str, str] = {}
        for v in versions:
            info = VersionInfo(
                version_id=v.version_id, trained_at=v.trained_at.timestamp(), registered_at=_ts(v.registered_at),
                model_type=v.model_type, status=v.status, training_samples=v.training_samples,
                validation_samples=v.validation_samples, validation_accuracy=v.validation_accuracy,
                validation_mae=v.validation_mae, metrics=dict(v.metrics or {}), lineage=dict(v.lineage or {}),
                archived_at=_ts(archived.get(v.version_id)),
            )
            if (st := stats.get(v.version_id)) is not None:
                info.live_total, info.live_correct, info.live_pnl = st.total_predictions, st.correct_predictions, st.total_pnl
            of(v.slot_key).versions.append(info)
            owner[v.version_id] = v.slot_key
        for champion in (await session.execute(select(SlotChampion).where(only(SlotChampion.slot_key)))).scalars():
            of(champion.slot_key).champion = (champion.version_id, champion.epoch, champion.activated_at.timestamp())
        for a in (await session.execute(select(ActivationHistory).where(only(ActivationHistory.slot_key))
                                        .order_by(ActivationHistory.slot_key, ActivationHistory.epoch))).scalars():
            of(a.slot_key).activations.append(Activation(a.epoch, a.activated_at.timestamp(), a.from_version_id,
                                                         a.to_version_id, a.actor, a.policy, a.reason))
        for c in (await session.execute(select(ChallengerHistory).where(only(ChallengerHistory.slot_key))
                                        .order_by(ChallengerHistory.revision))).scalars():
            of(c.slot_key).challenger_changes.append(
                ChallengerChange(c.revision, c.version_id, c.action, c.changed_at.timestamp(), c.actor, c.reason))
        for sc in (await session.execute(select(LiveScore).where(only(LiveScore.slot_key))
                                         .order_by(LiveScore.scored_at, LiveScore.id))).scalars():
            of(sc.slot_key).scores.append(
                Score(sc.outcome_prediction_id, sc.version_id, sc.shadow, sc.scored_at.timestamp(), sc.pnl, sc.correct))
        for d in (await session.execute(select(PromotionDecision).where(only(PromotionDecision.slot_key))
                                        .order_by(PromotionDecision.decided_at))).scalars():
            of(d.slot_key).decisions.append(Decision(d.decided_at.timestamp(), d.policy, d.challenger_version_id,
                                                     d.champion_version_id, d.promoted, d.stage, d.reason))
        samples = await session.execute(
            select(TrainingSample.model_version_id, TrainingSample.exit_time, TrainingSample.created_at,
                   TrainingSample.realized_pnl, TrainingSample.target_class)
            .where(TrainingSample.outcome_known.is_(True), TrainingSample.model_version_id.is_not(None))
            .order_by(TrainingSample.id))
        for version_id, exit_time, created_at, pnl, target_class in samples.all():
            if version_id in owner:
                at = (exit_time or created_at).timestamp()
                of(owner[version_id]).outcomes.append(Outcome(version_id, at, pnl, target_class))
        await _load_predictions(session, of, only)
    return [slots[key] for key in sorted(slots)]


async def _load_predictions(session: AsyncSession, of: Any, only: Any) -> None:
    mix = await session.execute(
        select(Prediction.slot_key, Prediction.version_id, Prediction.shadow, Prediction.action, func.count())
        .where(only(Prediction.slot_key))
        .group_by(Prediction.slot_key, Prediction.version_id, Prediction.shadow, Prediction.action))
    for slot_key, version_id, shadow, action, count in mix.all():
        of(slot_key).action_mix.setdefault((version_id, bool(shadow)), {})[action] = int(count)
    ranges = await session.execute(
        select(Prediction.slot_key, func.min(Prediction.created_at), func.max(Prediction.created_at))
        .where(only(Prediction.slot_key)).group_by(Prediction.slot_key))
    bounds: dict[str, tuple[float, float]] = {}
    for slot_key, low, high in ranges.all():
        if low is not None and high is not None:
            bounds[slot_key] = (_as_utc(low).timestamp(), _as_utc(high).timestamp())
            of(slot_key).prediction_range = bounds[slot_key]
    rows = await session.stream(
        select(Prediction.slot_key, Prediction.version_id, Prediction.shadow, Prediction.created_at)
        .where(only(Prediction.slot_key)).execution_options(yield_per=10_000))
    async for slot_key, version_id, shadow, created_at in rows:
        start, end = bounds[slot_key]
        width = max(end - start, 1.0) / PREDICTION_BUCKETS
        index = min(max(int((created_at.timestamp() - start) / width), 0), PREDICTION_BUCKETS - 1)
        buckets = of(slot_key).prediction_buckets.setdefault((version_id, bool(shadow)), [0] * PREDICTION_BUCKETS)
        buckets[index] += 1


def _as_utc(value: datetime) -> datetime:
    """Aggregates bypass the column type: SQLite returns naive UTC (or text) for min/max."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- rendering

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#1b2a41;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;opacity:.8;font-size:13px}main{padding:8px 32px 40px;max-width:1000px}
nav a{margin-right:14px}section.slot{background:#fff;border:1px solid #dde1e6;border-radius:8px;
padding:8px 24px 20px;margin:24px 0}h2{font-size:20px;margin:14px 0}h3{font-size:16px;margin:22px 0 8px;
border-bottom:1px solid #eee;padding-bottom:4px}.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#f0f3f7;border-radius:6px;padding:8px 14px;min-width:120px}.card b{display:block;font-size:18px}
.card span{font-size:12px;color:#555}table{border-collapse:collapse;font-size:13px;margin:8px 0;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eee;vertical-align:top}th{background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums}.empty{color:#777;font-style:italic}
.note{color:#555;font-size:13px}figure.chart{margin:10px 0}figure.chart figcaption{font-size:13px;font-weight:600;
margin-bottom:4px}svg{max-width:100%;height:auto;background:#fff}svg .axis{stroke:#888}svg .grid{stroke:#eee}
svg .zero{stroke:#999;stroke-dasharray:2 3}svg .event{stroke:#1b2a41;stroke-dasharray:4 3;stroke-width:1}
svg .tick{font-size:11px;fill:#555}svg .label{font-size:12px;fill:#333}svg .series{fill:none;stroke-width:2}
ul.legend{list-style:none;padding:0;margin:4px 0;font-size:12px;display:flex;flex-wrap:wrap;gap:14px}
.swatch{display:inline-block;width:22px;height:0;border-top:3px solid #555;vertical-align:middle;margin-right:5px}
.swatch.dashed{border-top-style:dashed}.swatch.solid{height:10px;border:none;background:#1f77b4}
.swatch.hatched{height:6px;border:1px dashed #1f77b4;background:rgba(31,119,180,.45)}
.swatch.ring{width:8px;height:8px;border:2px solid #1f77b4;border-radius:50%}
.swatch.event{border-top:2px dashed #1b2a41}.tag{font-size:11px;padding:1px 6px;border-radius:8px;background:#e6eefc}
.tag.champion{background:#d8f3dc}.tag.archived{background:#eee;color:#777}.tag.shadow{background:#fff3cd}
"""


def _slug(key: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in key).strip("-").lower()


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()) -> str:
    numeric_columns = set(numeric)
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{cell}</td>' if i in numeric_columns else f"<td>{cell}</td>"
                         for i, cell in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _empty(text: str) -> str:
    return f'<p class="empty">{escape(text)}</p>'


def _opt(value: float | None, fmt: Any = number) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else escape(fmt(value))


def _section(slot: SlotData, name: str, title: str, body: str) -> str:
    return f'<section id="{_slug(slot.key)}-{name}" data-section="{name}"><h3>{escape(title)}</h3>{body}</section>'


class _Colors:
    def __init__(self, versions: Sequence[VersionInfo]) -> None:
        self._map = {v.version_id: color_for(i) for i, v in enumerate(versions)}

    def __call__(self, version_id: str) -> str:
        if version_id not in self._map:
            self._map[version_id] = color_for(len(self._map))
        return self._map[version_id]


def _reigns(slot: SlotData, now: float) -> list[tuple[str, float, float, int]]:
    """(version, start, end, epoch) of each champion reign."""
    reigns = []
    for index, activation in enumerate(slot.activations):
        end = slot.activations[index + 1].at if index + 1 < len(slot.activations) else now
        reigns.append((activation.to_version, activation.at, end, activation.epoch))
    return reigns


def _shadow_runs(slot: SlotData, now: float) -> list[tuple[str, float, float]]:
    runs = []
    started: dict[str, float] = {}
    for change in slot.challenger_changes:
        if change.action == "add":
            started.setdefault(change.version_id, change.at)
        elif change.version_id in started:
            runs.append((change.version_id, started.pop(change.version_id), change.at))
    runs.extend((version, start, now) for version, start in started.items())
    return runs


def _versions_section(slot: SlotData, colors: _Colors, now: float) -> str:
    lanes = [v.version_id for v in slot.versions]
    known = set(lanes)
    bands = [Band(version, start, end, colors(version), f"{version} champion (epoch {epoch}) "
                  f"{_when(start)} → {_when(end)}") for version, start, end, epoch in _reigns(slot, now)
             if version in known]
    bands += [Band(version, start, end, colors(version), f"{version} in shadow {_when(start)} → {_when(end)}",
                   shadow=True) for version, start, end in _shadow_runs(slot, now) if version in known]
    markers = [Marker(v.version_id, v.trained_at, f"{v.version_id} trained {_when(v.trained_at)}",
                      colors(v.version_id)) for v in slot.versions]
    markers += [Marker(v.version_id, v.archived_at, f"{v.version_id} archived {_when(v.archived_at)}",
                       colors(v.version_id), shape="cross") for v in slot.versions if v.archived_at]
    events = [(a.at, f"epoch {a.epoch}: {a.from_version or '–'} → {a.to_version} ({a.policy})")
              for a in slot.activations]
    chart = timeline_chart(lanes, bands, markers, title="Versions over time", events=events, now=now)
    shadows = {version for version, _, end in _shadow_runs(slot, now) if end == now}
    champion = slot.champion[0] if slot.champion else None
    rows = []
    for v in reversed(slot.versions):
        tags = []
        if v.version_id == champion:
            tags.append('<span class="tag champion">champion</span>')
        if v.version_id in shadows:
            tags.append('<span class="tag shadow">shadow</span>')
        if v.archived_at:
            tags.append('<span class="tag archived">archived</span>')
        if not tags:
            tags.append(f'<span class="tag">{escape(v.status)}</span>')
        live_accuracy = v.live_correct / v.live_total if v.live_total else None
        swatch = f'<span class="swatch" style="border-color:{colors(v.version_id)}"></span>'
        rows.append([f"{swatch}{escape(v.version_id)}", " ".join(tags), escape(_when(v.trained_at)),
                     escape(v.model_type), f"{v.training_samples} / {v.validation_samples}",
                     _opt(v.validation_accuracy, percent), _opt(v.validation_mae), str(v.live_total),
                     _opt(live_accuracy, percent), _opt(v.live_pnl if v.live_total else None)])
    table = _table(["version", "state", "trained", "model", "train / validation samples", "validation accuracy",
                    "validation MAE", "live outcomes", "live accuracy", "live P&L"], rows, numeric=(5, 6, 7, 8, 9))
    return (chart or _empty("No version has been trained for this slot.")) + table


def _activations_section(slot: SlotData) -> str:
    if not slot.activations:
        return _empty("No version has been activated for this slot yet.")
    rows = [[str(a.epoch), escape(_when(a.at)), escape(a.from_version or "–"), escape(a.to_version),
             escape(a.policy), escape(a.actor), escape(a.reason)] for a in reversed(slot.activations)]
    return _table(["epoch", "when", "from", "to", "policy", "actor", "reason"], rows, numeric=(0,))


def _predictions_section(slot: SlotData, colors: _Colors) -> str:
    if not slot.prediction_buckets or slot.prediction_range is None:
        return _empty("No predictions recorded for this slot.")
    low, high = slot.prediction_range
    width = max(high - low, 1.0) / PREDICTION_BUCKETS
    ends = [low + (i + 1) * width for i in range(PREDICTION_BUCKETS)]
    series = []
    for (version, shadow), buckets in sorted(slot.prediction_buckets.items()):
        first = next(i for i, n in enumerate(buckets) if n)
        counts = list(itertools.accumulate(buckets))
        series.append(Series(f"{version}{' (shadow)' if shadow else ''}", [low + first * width, *ends[first:]],
                             [0, *counts[first:]], colors(version), dashed=shadow))
    chart = line_chart(series, title="Predictions per version (cumulative; a flat line stopped serving)",
                       y_label="predictions", y_format=lambda v: f"{v:.0f}")
    actions = sorted({a for mix in slot.action_mix.values() for a in mix})
    rows = []
    for (version, shadow), mix in sorted(slot.action_mix.items()):
        total = sum(mix.values())
        rows.append([escape(version + (" (shadow)" if shadow else "")), str(total),
                     *[f"{mix.get(a, 0)} ({mix.get(a, 0) / total:.0%})" for a in actions]])
    table = _table(["version", "predictions", *actions], rows, numeric=range(1, len(actions) + 2))
    return chart + table


def _cumulative(scores: Sequence[Score]) -> tuple[list[float], list[float]]:
    xs, ys, total = [], [], 0.0
    for score in scores:
        total += score.pnl
        xs.append(score.at)
        ys.append(total)
    return xs, ys


def _by_version(scores: Iterable[Score]) -> dict[tuple[str, bool], list[Score]]:
    grouped: dict[tuple[str, bool], list[Score]] = defaultdict(list)
    for score in scores:
        grouped[(score.version_id, score.shadow)].append(score)
    return dict(sorted(grouped.items()))


def _accuracy_section(slot: SlotData, colors: _Colors) -> str:
    series = []
    for (version, shadow), scores in _by_version(s for s in slot.scores if s.correct is not None).items():
        xs, ys, right = [], [], 0
        for n, score in enumerate(scores, start=1):
            right += 1 if score.correct else 0
            xs.append(score.at)
            ys.append(right / n)
        series.append(Series(f"{version}{' (shadow, would-be)' if shadow else ''} – {len(scores)} outcomes",
                             xs, ys, colors(version), dashed=shadow, step=True))
    if not series:
        return _empty("No trade outcome has been scored yet: live accuracy needs TradeOutcomeRecorded events.")
    return line_chart(series, title="Live accuracy per version (cumulative, over scored outcomes)",
                      y_label="accuracy", y_format=percent, y_range=(0.0, 1.0))


def _pnl_section(slot: SlotData, colors: _Colors) -> str:
    curves, drawdowns = [], []
    for (version, shadow), scores in _by_version(slot.scores).items():
        xs, ys = _cumulative(scores)
        name = f"{version}{' (shadow, would-be)' if shadow else ''}"
        curves.append(Series(name, xs, ys, colors(version), dashed=shadow, step=True))
        drawdowns.append(Series(name, xs, drawdown(ys, relative=False), colors(version), dashed=shadow, step=True,
                                fill=not shadow))
    parts = []
    if curves:
        parts.append(line_chart(curves, title="Cumulative live P&L per version", y_label="P&L", zero_line=True))
        parts.append(line_chart(drawdowns, title="Drawdown of the live P&L (from its running peak)",
                                y_label="drawdown", zero_line=True, height=180))
    else:
        parts.append(_empty("No trade outcome has been scored yet: no live P&L."))
    if slot.outcomes:
        grouped: dict[str, list[Outcome]] = defaultdict(list)
        for outcome in slot.outcomes:
            grouped[outcome.version_id].append(outcome)
        rows = []
        for version, outcomes in sorted(grouped.items()):
            classes = defaultdict(int, {c: sum(1 for o in outcomes if o.target_class == c)
                                        for c in ("WIN", "LOSS", "NEUTRAL")})
            rows.append([escape(version), str(len(outcomes)), str(classes["WIN"]), str(classes["LOSS"]),
                         str(classes["NEUTRAL"]), _opt(sum(o.pnl or 0.0 for o in outcomes))])
        parts.append('<p class="note">Realised trade outcomes (training samples with a known outcome):</p>')
        parts.append(_table(["version", "trades", "win", "loss", "neutral", "realised P&L"], rows,
                            numeric=range(1, 6)))
    else:
        parts.append(_empty("No training sample has a known trade outcome yet."))
    return "".join(parts)


def _shadow_section(slot: SlotData, colors: _Colors) -> str:
    shadow_outcomes = {s.outcome_id for s in slot.scores if s.shadow}
    parts = []
    if shadow_outcomes:
        same = [s for s in slot.scores if s.outcome_id in shadow_outcomes]
        series = []
        for (version, shadow), scores in _by_version(same).items():
            xs, ys = _cumulative(scores)
            label = f"{version} (shadow, would-be)" if shadow else f"{version} (champion, real)"
            series.append(Series(label, xs, ys, colors(version), dashed=shadow, step=True))
        parts.append(line_chart(series, title="Shadow challengers vs champion on the same trade outcomes",
                                y_label="cumulative P&L", zero_line=True))
    else:
        parts.append(_empty("No shadow challenger has been scored against a trade outcome for this slot."))
    if slot.decisions:
        rows = [[escape(_when(d.at)), escape(d.policy), escape(d.stage), escape(d.challenger),
                 escape(d.champion or "–"), "yes" if d.promoted else "no", escape(d.reason)]
                for d in reversed(slot.decisions)]
        parts.append(_table(["when", "policy", "stage", "challenger", "champion", "promoted", "reason"], rows))
    else:
        parts.append(_empty("No promotion decision recorded."))
    return "".join(parts)


def _backtests_section(slot: SlotData, colors: _Colors) -> str:
    tested = [v for v in slot.versions if v.backtest_stats]
    if not tested:
        return _empty("No version of this slot carries backtest metrics (CNN versions trained with backtesting "
                      "store backtest_* metrics; other families are not backtested).")
    rows = [[escape(v.version_id), *[_opt(v.metrics.get(key), fmt) for key, _, fmt in BACKTEST_STATS]]
            for v in tested]
    parts = [_table(["version", *[label for _, label, _ in BACKTEST_STATS]], rows,
                    numeric=range(1, len(BACKTEST_STATS) + 1))]
    curves = [(v, curve) for v in tested if (curve := v.equity_curve)]
    if curves:
        equity = [Series(v.version_id, list(range(len(c))), c, colors(v.version_id)) for v, c in curves]
        falls = [Series(v.version_id, list(range(len(c))), drawdown(c, relative=True), colors(v.version_id),
                        fill=True) for v, c in curves]
        parts.append(line_chart(equity, title="Backtest equity curves (start = 1)", y_label="equity",
                                time_axis=False, x_format=lambda x: f"{x:.0f}"))
        parts.append(line_chart(falls, title="Backtest drawdown", y_label="drawdown", time_axis=False,
                                y_format=percent, x_format=lambda x: f"{x:.0f}", height=180, zero_line=True))
    missing = [v.version_id for v in tested if v.equity_curve is None]
    if missing:
        parts.append(_empty(f"No equity curve stored for {', '.join(missing)}: only the summary statistics above."))
    return "".join(parts)


def _slot_html(slot: SlotData, now: float) -> str:
    colors = _Colors(slot.versions)
    champion = slot.champion
    champion_pnl = next((v.live_pnl for v in slot.versions if champion and v.version_id == champion[0]), None)
    cards = [
        ("champion", f"{champion[0]}" if champion else "none"),
        ("epoch", str(champion[1]) if champion else "–"),
        ("champion since", _when(champion[2]) if champion else "–"),
        ("versions", str(len(slot.versions))),
        ("predictions", str(slot.predictions)),
        ("outcomes scored", str(len({s.outcome_id for s in slot.scores}))),
        ("champion live P&L", _opt(champion_pnl)),
    ]
    cards_html = "".join(f'<div class="card"><span>{escape(k)}</span><b>{escape(v)}</b></div>' for k, v in cards)
    sections = [
        _section(slot, "versions", "Versions over time", _versions_section(slot, colors, now)),
        _section(slot, "activations", "Activation history", _activations_section(slot)),
        _section(slot, "predictions", "Predictions", _predictions_section(slot, colors)),
        _section(slot, "accuracy", "Live accuracy", _accuracy_section(slot, colors)),
        _section(slot, "pnl", "Live P&L", _pnl_section(slot, colors)),
        _section(slot, "shadow", "Shadow vs champion", _shadow_section(slot, colors)),
        _section(slot, "backtests", "Backtests", _backtests_section(slot, colors)),
    ]
    return (f'<section class="slot" id="{_slug(slot.key)}" data-slot="{escape(slot.key)}">'
            f'<h2>{escape(slot.key)}</h2><div class="cards">{cards_html}</div>{"".join(sections)}</section>')


def render(data: ReportData) -> str:
    """The whole report as one HTML document."""
    nav = " ".join(f'<a href="#{_slug(s.key)}">{escape(s.key)}</a>' for s in data.slots)
    body = "".join(_slot_html(s, data.generated_at) for s in data.slots) or _empty(
        "No slot has a trained version yet: run a retrain first.")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>tradeloop report</title><style>{CSS}</style></head><body>"
        f"<header><h1>tradeloop report</h1><p>generated {escape(_when(data.generated_at))} from "
        f"{escape(data.database)} · {len(data.slots)} slot(s)</p></header>"
        f"<main><nav>{nav}</nav>{body}</main></body></html>\n"
    )


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "database"


async def write_report(settings: ServiceSettings, out: Path, slot: str | None = None) -> ReportData:
    """Read the configured database and write the report to ``out``."""
    engine = make_engine(settings.effective_database_url)
    try:
        slots = await load(make_sessionmaker(engine), slot)
    finally:
        await engine.dispose()
    data = ReportData(generated_at=datetime.now(UTC).timestamp(), slots=slots,
                      database=_redacted(settings.effective_database_url))
    await asyncio.to_thread(_write, out, render(data))
    return data


def _write(out: Path, text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


def run_report(settings: ServiceSettings, args: Any) -> int:
    """``tradeloop report --out FILE [--slot KEY]``."""
    out = Path(args.out)
    try:
        data = asyncio.run(write_report(settings, out, args.slot))
    except DBAPIError as error:
        sys.stderr.write(f"tradeloop report: cannot read the database ({error.orig!r}); "
                         "is it migrated (`tradeloop migrate`)?\n")
        return 1
    if args.slot and not data.slots:
        sys.stderr.write(f"tradeloop report: no data for slot {args.slot}\n")
    sys.stdout.write(f"wrote {out} ({len(data.slots)} slot(s))\n")
    return 0

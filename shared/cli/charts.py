"""Small hand-written SVG charts for ``tradeloop report`` (no plotting library, no JavaScript).

Each chart is a ``<figure class="chart" data-points="N">`` holding an inline ``<svg>`` and an HTML
legend; ``N`` is the number of data points drawn (0 never happens: empty input gives ``""``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
)

WIDTH = 880
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 14, 34
_TIME_STEPS = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
    86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 91 * 86400, 365 * 86400,
)

Formatter = Callable[[float], str]


@dataclass(frozen=True)
class Series:
    """One line: x values (unix seconds on a time axis), y values, how to draw it."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str
    dashed: bool = False
    step: bool = False
    fill: bool = False
    """Fill between the line and y = 0 (drawdowns)."""


@dataclass(frozen=True)
class Band:
    """A period on a timeline lane (a champion reign, a shadow run)."""

    lane: str
    start: float
    end: float
    color: str
    label: str
    shadow: bool = False


@dataclass(frozen=True)
class Marker:
    """A point event on a timeline lane (trained, archived)."""

    lane: str
    x: float
    label: str
    color: str
    shape: str = "circle"


def color_for(index: int) -> str:
    """The palette colour number ``index`` (cycling)."""
    return PALETTE[index % len(PALETTE)]


def number(value: float) -> str:
    """A short human number: 4 significant digits, no exponent for everyday magnitudes."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    magnitude = abs(value)
    if magnitude >= 1e6 or magnitude < 1e-4:
        return f"{value:.3g}"
    return f"{value:.4g}"


def percent(value: float) -> str:
    """``0.1234`` → ``12.3%``."""
    return f"{value * 100:.1f}%"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
    return ticks


def time_ticks(low: float, high: float, count: int = 6) -> list[tuple[float, str]]:
    """(unix seconds, label) ticks on round UTC times covering [low, high]."""
    span = max(high - low, 1.0)
    step = next((s for s in _TIME_STEPS if span / s <= count), _TIME_STEPS[-1])
    start = math.ceil(low / step) * step
    if step < 60:
        fmt = "%H:%M:%S"
    elif step < 86400:
        fmt = "%H:%M" if span < 86400 else "%m-%d %H:%M"
    else:
        fmt = "%Y-%m-%d"
    ticks = []
    value = float(start)
    while value <= high:
        ticks.append((value, datetime.fromtimestamp(value, UTC).strftime(fmt)))
        value += step
    return ticks


def _padded(low: float, high: float, minimum: float) -> tuple[float, float]:
    if high - low < minimum:
        middle = (low + high) / 2
        return middle - minimum / 2, middle + minimum / 2
    return low, high


class _Frame:
    """Maps data coordinates onto the plotting area of one SVG."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], width: int, height: int) -> None:
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        self.left, self.right = MARGIN_LEFT, width - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, height - MARGIN_BOTTOM

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - (value - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)


def _x_axis(frame: _Frame, time_axis: bool, x_format: Formatter) -> list[str]:
    parts = [f'<line class="axis" x1="{frame.left}" y1="{frame.bottom}" x2="{frame.right}" y2="{frame.bottom}"/>']
    ticks = (time_ticks(frame.x0, frame.x1) if time_axis
             else [(t, x_format(t)) for t in nice_ticks(frame.x0, frame.x1, 6)])
    for value, label in ticks:
        if frame.x0 <= value <= frame.x1:
            x = frame.x(value)
            parts.append(f'<line class="grid" x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{frame.bottom}"/>')
            parts.append(f'<text class="tick" x="{x:.1f}" y="{frame.bottom + 16}" text-anchor="middle">'
                         f"{escape(label)}</text>")
    return parts


def _y_axis(frame: _Frame, y_format: Formatter, y_label: str) -> list[str]:
    parts = [f'<line class="axis" x1="{frame.left}" y1="{frame.top}" x2="{frame.left}" y2="{frame.bottom}"/>']
    for value in nice_ticks(frame.y0, frame.y1):
        if frame.y0 <= value <= frame.y1:
            y = frame.y(value)
            parts.append(f'<line class="grid" x1="{frame.left}" y1="{y:.1f}" x2="{frame.right}" y2="{y:.1f}"/>')
            parts.append(f'<text class="tick" x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                         f"{escape(y_format(value))}</text>")
    middle = (frame.top + frame.bottom) / 2
    parts.append(f'<text class="label" x="14" y="{middle:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {middle:.1f})">{escape(y_label)}</text>')
    return parts


def _legend(entries: Sequence[tuple[str, str, bool]]) -> str:
    items = "".join(
        f'<li><span class="swatch{" dashed" if dashed else ""}" style="border-color:{color}"></span>'
        f"{escape(name)}</li>"
        for name, color, dashed in entries
    )
    return f'<ul class="legend">{items}</ul>'


def _figure(svg: str, points: int, legend: str, title: str) -> str:
    return (f'<figure class="chart" data-points="{points}"><figcaption>{escape(title)}</figcaption>'
            f"{svg}{legend}</figure>")


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    y_label: str,
    time_axis: bool = True,
    y_format: Formatter = number,
    x_format: Formatter = number,
    height: int = 260,
    y_range: tuple[float, float] | None = None,
    zero_line: bool = False,
) -> str:
    """A line chart of ``series``; ``""`` when there is no point to draw."""
    drawn = [s for s in series if len(s.xs) and len(s.xs) == len(s.ys)]
    points = [(x, y) for s in drawn for x, y in zip(s.xs, s.ys, strict=True) if math.isfinite(y)]
    if not points:
        return ""
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    x_low, x_high = _padded(min(xs), max(xs), 60.0 if time_axis else 1.0)
    if y_range is not None:
        y_low, y_high = y_range
    else:
        y_low, y_high = min(ys), max(ys)
        if zero_line:
            y_low, y_high = min(y_low, 0.0), max(y_high, 0.0)
        y_low, y_high = _padded(y_low, y_high, max(abs(y_high) * 0.1, 1e-9))
        margin = (y_high - y_low) * 0.05
        y_low, y_high = y_low - margin, y_high + margin
    frame = _Frame((x_low, x_high), (y_low, y_high), WIDTH, height)
    parts = [*_x_axis(frame, time_axis, x_format), *_y_axis(frame, y_format, y_label)]
    if zero_line and y_low < 0 < y_high:
        parts.append(f'<line class="zero" x1="{frame.left}" y1="{frame.y(0):.1f}" x2="{frame.right}" '
                     f'y2="{frame.y(0):.1f}"/>')
    for s in drawn:
        pairs = sorted((x, y) for x, y in zip(s.xs, s.ys, strict=True) if math.isfinite(y))
        if not pairs:
            continue
        commands = [f"M{frame.x(pairs[0][0]):.1f},{frame.y(pairs[0][1]):.1f}"]
        for x, y in pairs[1:]:
            if s.step:
                commands.append(f"H{frame.x(x):.1f}V{frame.y(y):.1f}")
            else:
                commands.append(f"L{frame.x(x):.1f},{frame.y(y):.1f}")
        path = "".join(commands)
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        if s.fill:
            baseline = frame.y(max(min(0.0, y_high), y_low))
            area = f"{path}V{baseline:.1f}H{frame.x(pairs[0][0]):.1f}Z"
            parts.append(f'<path d="{area}" fill="{s.color}" fill-opacity="0.18" stroke="none"/>')
        parts.append(f'<path class="series" d="{path}" stroke="{s.color}"{dash}><title>{escape(s.name)}</title></path>')
        if len(pairs) == 1:
            x, y = pairs[0]
            parts.append(f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="3" fill="{s.color}"/>')
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
           f'height="{height}" role="img" aria-label="{escape(title)}">{"".join(parts)}</svg>')
    return _figure(svg, len(points), _legend([(s.name, s.color, s.dashed) for s in drawn]), title)


def timeline_chart(
    lanes: Sequence[str],
    bands: Sequence[Band],
    markers: Sequence[Marker],
    *,
    title: str,
    events: Sequence[tuple[float, str]] = (),
    now: float | None = None,
) -> str:
    """One lane per version: champion reigns (solid), shadow runs (hatched), trained/archived markers."""
    if not lanes or not (bands or markers):
        return ""
    times = [b.start for b in bands] + [b.end for b in bands] + [m.x for m in markers] + [t for t, _ in events]
    x_low, x_high = _padded(min(times), max(times + ([now] if now else [])), 60.0)
    pad = (x_high - x_low) * 0.02
    lane_height = 26
    height = MARGIN_TOP + MARGIN_BOTTOM + lane_height * len(lanes) + 6
    frame = _Frame((x_low - pad, x_high + pad), (0.0, 1.0), WIDTH, height)
    frame.left = 170
    row = {lane: index for index, lane in enumerate(lanes)}
    parts = _x_axis(frame, True, number)
    for lane, index in row.items():
        y = MARGIN_TOP + index * lane_height
        parts.append(f'<text class="tick" x="{frame.left - 8}" y="{y + 17}" text-anchor="end">{escape(lane)}</text>')
        parts.append(f'<line class="grid" x1="{frame.left}" y1="{y + lane_height:.1f}" x2="{frame.right}" '
                     f'y2="{y + lane_height:.1f}"/>')
    for x, label in events:
        parts.append(f'<line class="event" x1="{frame.x(x):.1f}" y1="{frame.top}" x2="{frame.x(x):.1f}" '
                     f'y2="{frame.bottom}"><title>{escape(label)}</title></line>')
    for band in bands:
        y = MARGIN_TOP + row[band.lane] * lane_height + (9 if band.shadow else 4)
        h = 8 if band.shadow else 18
        x0, x1 = frame.x(band.start), frame.x(band.end)
        style = f'fill="{band.color}"' + (' fill-opacity="0.45" stroke-dasharray="3 2"' if band.shadow else "")
        parts.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 2):.1f}" height="{h}" {style} '
                     f'stroke="{band.color}"><title>{escape(band.label)}</title></rect>')
    for marker in markers:
        x = frame.x(marker.x)
        y = MARGIN_TOP + row[marker.lane] * lane_height + 13
        if marker.shape == "cross":
            parts.append(f'<path d="M{x - 5:.1f},{y - 5}L{x + 5:.1f},{y + 5}M{x - 5:.1f},{y + 5}L{x + 5:.1f},{y - 5}" '
                         f'stroke="{marker.color}" stroke-width="2"><title>{escape(marker.label)}</title></path>')
        else:
            parts.append(f'<circle cx="{x:.1f}" cy="{y}" r="5" fill="white" stroke="{marker.color}" '
                         f'stroke-width="2"><title>{escape(marker.label)}</title></circle>')
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
           f'height="{height}" role="img" aria-label="{escape(title)}">{"".join(parts)}</svg>')
    legend = ('<ul class="legend"><li><span class="swatch solid"></span>champion</li>'
              '<li><span class="swatch hatched"></span>shadow challenger</li>'
              '<li><span class="swatch ring"></span>trained</li><li>× archived</li>'
              '<li><span class="swatch event"></span>activation</li></ul>')
    return _figure(svg, len(bands) + len(markers), legend, title)


def drawdown(values: Sequence[float], relative: bool) -> list[float]:
    """Fall from the running peak at each point: a fraction of the peak (equity) or absolute (P&L)."""
    result = []
    peak = -math.inf
    for value in values:
        peak = max(peak, value)
        if relative:
            result.append(value / peak - 1.0 if peak > 0 else 0.0)
        else:
            result.append(value - peak)
    return result

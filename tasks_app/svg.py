"""Tiny server-rendered SVG charts for the dashboard: no JavaScript, no external assets.

Each function returns one standalone `<svg>` element as a string. Every label, series name and formatted value is
XML-escaped here, so callers may mark the result safe. Text uses `currentColor`, so the charts follow the admin's
light and dark themes."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from html import escape

PALETTE = ("#417690", "#79aec8", "#e0a030", "#ba2121", "#6a9f3a", "#8e6bb0", "#c77d4a", "#5a8f8f")
TRACK = "#8884"  # translucent grey: the unused part of a bar, readable on light and dark backgrounds
WIDTH = 560
FONT = 12
ROW = 22
LABEL_WIDTH = 150
VALUE_WIDTH = 70

Formatter = Callable[[float], str]


def compact(value: float) -> str:
    """1234 → "1.2k", 2500000 → "2.5M", 3.0 → "3"; short enough for a chart label."""
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _number(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _svg(title: str, height: float, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {_number(height)}" width="{WIDTH}" '
        f'height="{_number(height)}" role="img" aria-label="{_attr(title)}" class="cockpit-chart" '
        f'font-family="sans-serif" font-size="{FONT}">'
        f"<title>{_attr(title)}</title>{''.join(body)}</svg>"
    )


def _text(x: float, y: float, content: str, *, anchor: str = "start", weight: str = "normal") -> str:
    return (f'<text x="{_number(x)}" y="{_number(y)}" text-anchor="{anchor}" font-weight="{weight}" '
            f'fill="currentColor">{_attr(content)}</text>')


def _rect(x: float, y: float, width: float, height: float, fill: str, tooltip: str = "") -> str:
    hover = f"<title>{_attr(tooltip)}</title>" if tooltip else ""
    return (f'<rect x="{_number(x)}" y="{_number(y)}" width="{_number(max(width, 0))}" '
            f'height="{_number(height)}" fill="{_attr(fill)}">{hover}</rect>')


def _clip(label: str, chars: int = 22) -> str:
    return label if len(label) <= chars else f"{label[:chars - 1]}…"


def _empty(title: str) -> str:
    return _svg(title, ROW * 2, [_text(WIDTH / 2, ROW * 1.2, "no data", anchor="middle")])


def _legend(y: float, names: Sequence[str], colors: Sequence[str]) -> list[str]:
    body, x = [], LABEL_WIDTH
    for name, color in zip(names, colors, strict=True):
        body.append(_rect(x, y - 9, 10, 10, color))
        body.append(_text(x + 14, y, name))
        x += 24 + 7 * len(name)
    return body


def bar_chart(rows: Sequence[tuple[str, float]], *, title: str, format_value: Formatter = compact,
              color: str = PALETTE[0], maximum: float | None = None) -> str:
    """Horizontal bars, one per (label, value), scaled to `maximum` (default: the largest value)."""
    if not rows:
        return _empty(title)
    top = maximum if maximum is not None else max(value for _, value in rows)
    span = WIDTH - LABEL_WIDTH - VALUE_WIDTH
    body = []
    for index, (label, value) in enumerate(rows):
        y = index * ROW + 4
        length = span * value / top if top > 0 else 0
        body.append(_text(LABEL_WIDTH - 6, y + ROW / 2 + 1, _clip(label), anchor="end"))
        body.append(_rect(LABEL_WIDTH, y + 3, span, ROW - 8, TRACK))
        body.append(_rect(LABEL_WIDTH, y + 3, length, ROW - 8, color, f"{label}: {format_value(value)}"))
        body.append(_text(LABEL_WIDTH + span + 6, y + ROW / 2 + 1, format_value(value)))
    return _svg(title, len(rows) * ROW + 8, body)


def stacked_bar(rows: Sequence[tuple[str, Sequence[float], str]], *, series: Sequence[str], title: str,
                colors: Sequence[str] = PALETTE) -> str:
    """Horizontal bars split into `series` segments, each row filling the full width (its own total is 100%).
    A row is (label, one value per series, the text shown after the bar)."""
    if not rows:
        return _empty(title)
    colors = [colors[index % len(colors)] for index in range(len(series))]
    span = WIDTH - LABEL_WIDTH - VALUE_WIDTH
    body = []
    for index, (label, values, note) in enumerate(rows):
        y = index * ROW + 4
        total = sum(values)
        body.append(_text(LABEL_WIDTH - 6, y + ROW / 2 + 1, _clip(label), anchor="end"))
        body.append(_rect(LABEL_WIDTH, y + 3, span, ROW - 8, TRACK))
        x = LABEL_WIDTH
        for name, value, color in zip(series, values, colors, strict=True):
            length = span * value / total if total > 0 else 0
            body.append(_rect(x, y + 3, length, ROW - 8, color, f"{label} {name}: {compact(value)}"))
            x += length
        body.append(_text(LABEL_WIDTH + span + 6, y + ROW / 2 + 1, note))
    legend_y = len(rows) * ROW + 20
    body.extend(_legend(legend_y, series, colors))
    return _svg(title, legend_y + 8, body)


def column_chart(categories: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], *, title: str,
                 format_value: Formatter = compact, colors: Sequence[str] = PALETTE) -> str:
    """Vertical columns, one per category (a day), stacked by series (an account); the total sits on top."""
    totals = [sum(values[index] for _, values in series) for index in range(len(categories))]
    if not categories or not series or not any(totals):
        return _empty(title)
    colors = [colors[index % len(colors)] for index in range(len(series))]
    left, plot_top, plot_height = 50, 18, 160
    baseline = plot_top + plot_height
    slot = (WIDTH - left - 10) / len(categories)
    bar_width = min(slot * 0.6, 48)
    top = max(totals)
    body = [
        f'<line x1="{left}" y1="{baseline}" x2="{WIDTH - 10}" y2="{baseline}" stroke="currentColor" '
        f'stroke-opacity="0.4"/>',
        f'<line x1="{left}" y1="{plot_top}" x2="{WIDTH - 10}" y2="{plot_top}" stroke="currentColor" '
        f'stroke-opacity="0.15" stroke-dasharray="3 3"/>',
        _text(left - 6, plot_top + 4, format_value(top), anchor="end"),
        _text(left - 6, baseline + 4, format_value(0), anchor="end"),
    ]
    for index, category in enumerate(categories):
        x = left + slot * index + (slot - bar_width) / 2
        y = baseline
        for (name, values), color in zip(series, colors, strict=True):
            height = plot_height * values[index] / top
            if height > 0:
                y -= height
                body.append(_rect(x, y, bar_width, height, color,
                                  f"{category} {name}: {format_value(values[index])}"))
        if totals[index]:
            body.append(_text(x + bar_width / 2, y - 4, format_value(totals[index]), anchor="middle"))
        body.append(_text(x + bar_width / 2, baseline + 16, _clip(category, 12), anchor="middle"))
    legend_y = baseline + 40
    names = [_clip(name) for name, _ in series]
    body.extend(_legend_rows(legend_y, names, colors))
    rows = (len(names) + 2) // 3
    return _svg(title, legend_y + ROW * (rows - 1) + 10, body)


def _legend_rows(y: float, names: Sequence[str], colors: Sequence[str], per_row: int = 3) -> list[str]:
    """A legend three entries a line: accounts can be many and their names long."""
    body = []
    column_width = (WIDTH - 50) / per_row
    for index, (name, color) in enumerate(zip(names, colors, strict=True)):
        x = 50 + column_width * (index % per_row)
        row_y = y + ROW * (index // per_row)
        body.append(_rect(x, row_y - 9, 10, 10, color))
        body.append(_text(x + 14, row_y, name))
    return body


def nice_axis(maximum: float, *, ticks: int = 4) -> tuple[float, float]:
    """(top, step) of an axis from 0 that holds `maximum` in about `ticks` steps of 1, 2, 2.5 or 5 times a power of
    ten: 0.03 → (0.04, 0.01), 7 → (8, 2), 1234 → (1500, 500)."""
    if maximum <= 0:
        return 1.0, 0.25
    raw = maximum / ticks
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))
    return math.ceil(maximum / step - 1e-9) * step, step


def usd_axis_label(value: float, step: float) -> str:
    """A money tick as precise as its step needs, and at least to the cent below $1 steps: $0.004, $0.25, $5."""
    places = 0
    while places < 6 and abs(step * 10 ** places - round(step * 10 ** places)) > 1e-9:
        places += 1
    if places:
        places = max(places, 2)
    return f"${value:,.{places}f}"


def usd(value: float) -> str:
    """An amount for a tooltip: cents from $1 up, four decimals below (runs cost fractions of a cent)."""
    if value >= 1 or value == 0:
        return f"${value:,.2f}"
    return f"${value:.4f}"


def budget_column_chart(categories: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], *, title: str,
                        budgets: Mapping[str, float] | None = None, colors: Sequence[str] = PALETTE) -> str:
    """Money per category (a day) and series (an account), one column each side by side, on a labelled axis that
    scales to the data (cents when the data is cents); each series' budget (`budgets`, by series name) is a dashed
    line of its colour. A budget more than twice the largest column is left off the scale, so that it cannot flatten
    the data, and said in the legend."""
    budgets = budgets or {}
    values = [value for _, row in series for value in row]
    if not categories or not series or not (any(values) or budgets):
        return _empty(title)
    colors = [colors[index % len(colors)] for index in range(len(series))]
    largest = max(values, default=0)
    shown = {name: budget for name, budget in budgets.items() if largest <= 0 or budget <= 2 * largest}
    top, step = nice_axis(max([largest, *shown.values()]))
    left, right, plot_top, plot_height = 64, WIDTH - 10, 12, 160
    baseline = plot_top + plot_height

    def y_of(value: float) -> float:
        return baseline - plot_height * value / top

    body = []
    for index in range(round(top / step) + 1):
        tick = step * index
        body.append(f'<line x1="{left}" y1="{_number(y_of(tick))}" x2="{right}" y2="{_number(y_of(tick))}" '
                    f'stroke="currentColor" stroke-opacity="{0.4 if index == 0 else 0.12}" class="tick"/>')
        body.append(_text(left - 6, y_of(tick) + 4, usd_axis_label(tick, step), anchor="end"))
    slot = (right - left) / len(categories)
    bar_width = min(slot * 0.8 / len(series), 24)
    for index, category in enumerate(categories):
        x = left + slot * index + (slot - bar_width * len(series)) / 2
        for (name, row), color in zip(series, colors, strict=True):
            height = plot_height * row[index] / top
            body.append(_rect(x, baseline - height, bar_width, height, color,
                              f"{category} {name}: {usd(row[index])}"))
            x += bar_width
        body.append(_text(left + slot * index + slot / 2, baseline + 16, _clip(category, 12), anchor="middle"))
    for (name, _), color in zip(series, colors, strict=True):
        if name in shown:
            y = _number(y_of(shown[name]))
            body.append(f'<line x1="{left}" y1="{y}" x2="{right}" y2="{y}" stroke="{_attr(color)}" stroke-width="2" '
                        f'stroke-dasharray="6 4" class="budget"><title>{_attr(name)} budget: '
                        f'{_attr(usd_axis_label(shown[name], 0.01))}</title></line>')
    names = []
    for name, _ in series:
        label = _clip(name)
        if name in budgets:
            where = "" if name in shown else ", off scale"
            label = f"{label} (budget {usd_axis_label(budgets[name], 0.01)}{where})"
        names.append(label)
    legend_y = baseline + 40
    body.extend(_legend_rows(legend_y, names, colors, per_row=2))
    rows = (len(names) + 1) // 2
    return _svg(title, legend_y + ROW * (rows - 1) + 10, body)

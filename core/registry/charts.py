"""Small inline SVG line charts for the admin's experiment page (no JavaScript, no assets)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from django.utils.html import escape

COLOURS = {"stable": "#417690", "canary": "#d9822b", "shadow": "#8e44ad"}


def line_chart(
    title: str,
    series: Mapping[str, Sequence[tuple[datetime, float]]],
    *,
    percent: bool = False,
    width: int = 420,
    height: int = 160,
) -> str:
    """One SVG: a line per arm over time, the y axis from 0 to the largest value."""
    pad_left, pad_bottom, pad_top = 46, 20, 22
    points = [point for values in series.values() for point in values]
    if not points:
        return (
            f'<svg width="{width}" height="40" role="img"><text x="4" y="24" font-size="12">'
            f"{escape(title)}: no data yet</text></svg>"
        )
    start = min(moment for moment, _ in points).timestamp()
    end = max(moment for moment, _ in points).timestamp()
    span = max(end - start, 1.0)
    top = max(value for _, value in points) or 1.0
    inner_w, inner_h = width - pad_left - 8, height - pad_bottom - pad_top

    def x(moment: datetime) -> float:
        return pad_left + (moment.timestamp() - start) / span * inner_w

    def y(value: float) -> float:
        return pad_top + inner_h - value / top * inner_h

    label = f"{top:.1%}" if percent else f"{top:.3g}"
    parts = [
        f'<svg width="{width}" height="{height}" role="img" aria-label="{escape(title)}" '
        'style="background:#fff;border:1px solid #ddd;margin:4px">',
        f'<text x="4" y="14" font-size="12" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{pad_left}" y1="{pad_top + inner_h}" x2="{width - 8}" '
        f'y2="{pad_top + inner_h}" stroke="#999"/>',
        f'<line x1="{pad_left}" y1="{pad_top}" x2="{pad_left}" y2="{pad_top + inner_h}" '
        'stroke="#999"/>',
        f'<text x="2" y="{pad_top + 8}" font-size="10">{escape(label)}</text>',
        f'<text x="2" y="{pad_top + inner_h}" font-size="10">0</text>',
    ]
    legend_x = width - 150
    for index, (arm, values) in enumerate(series.items()):
        colour = COLOURS.get(arm, "#333")
        parts.append(
            f'<text x="{legend_x + index * 70}" y="14" font-size="11" fill="{colour}">'
            f"&#9632; {escape(arm)}</text>"
        )
        if not values:
            continue
        path = " ".join(f"{x(moment):.1f},{y(value):.1f}" for moment, value in values)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        for moment, value in values:
            parts.append(
                f'<circle cx="{x(moment):.1f}" cy="{y(value):.1f}" r="2" fill="{colour}"/>'
            )
    parts.append("</svg>")
    return "".join(parts)

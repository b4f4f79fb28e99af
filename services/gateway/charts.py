"""Charts drawn on the server as inline SVG: no script, no inline style, no external host (the CSP stays strict)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 720
HEIGHT = 220
LEFT = 44
BOTTOM = 36
TOP = 12


@dataclass(frozen=True)
class Series:
    """One row of bars: a name for the legend, a CSS class for the colour, a value per slot."""

    name: str
    css: str
    values: Sequence[int]


def _nice_max(value: int) -> int:
    """The axis top: the smallest 1, 2 or 5 × 10^n at or above `value` (at least 1)."""
    top = 1
    while True:
        for step in (1, 2, 5):
            if top * step >= value:
                return top * step
        top *= 10


def bar_chart(labels: Sequence[str], series: Sequence[Series], title: str) -> Markup:
    """Grouped bars, one group per label (an hour, a provider), with a y axis, the labels and a legend."""
    slots = max(len(labels), 1)
    top = _nice_max(max((v for s in series for v in s.values), default=0))
    plot_w = WIDTH - LEFT - 8
    plot_h = HEIGHT - TOP - BOTTOM
    group_w = plot_w / slots
    bar_w = min(36.0, max(1.0, group_w * 0.8 / max(len(series), 1)))
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT + 18}" role="img" aria-label="{escape(title)}"'
        ' xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for tick in (0, top // 2 if top > 1 else 0, top):
        y = TOP + plot_h - plot_h * tick / top
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>')
    every = max(1, slots // 12)
    for i, label in enumerate(labels):
        # The group's bars centred in its slot.
        x0 = LEFT + i * group_w + (group_w - bar_w * len(series)) / 2
        for j, one in enumerate(series):
            value = one.values[i] if i < len(one.values) else 0
            h = plot_h * value / top
            x = x0 + j * bar_w
            parts.append(
                f'<rect class="{escape(one.css)}" x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{bar_w:.1f}"'
                f' height="{h:.1f}"><title>{escape(label)} {escape(one.name)}: {value}</title></rect>'
            )
        if i % every == 0:
            cx = LEFT + i * group_w + group_w / 2
            parts.append(
                f'<text class="axis" x="{cx:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{escape(label)}</text>'
            )
    x = LEFT
    for one in series:
        parts.append(f'<rect class="{escape(one.css)}" x="{x}" y="{HEIGHT + 4}" width="10" height="10"/>')
        parts.append(f'<text class="legend" x="{x + 14}" y="{HEIGHT + 13}">{escape(one.name)}</text>')
        x += 14 + 12 * max(4, len(one.name)) + 16
    parts.append("</svg>")
    # Every text and attribute value above went through escape(); the rest are numbers and literals.
    return Markup("".join(parts))  # nosec B704 # noqa: S704

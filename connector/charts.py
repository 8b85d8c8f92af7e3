"""Small inline-SVG charts for the HTML report: no JavaScript, no network, no fonts.

Every text that reaches the SVG is escaped; the page must open offline, years later.
Each chart names itself in ``aria-label`` (``label``): what a screen reader announces, and
what tells one chart from another in the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

__all__ = ["bar_chart", "heatmap", "histogram"]

FONT = "font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif"
BAR = "#3b6ea8"


def bar_chart(items: Sequence[tuple[str, float]], *, label: str, unit: str = "",
              width: int = 460) -> str:
    """Horizontal bars with their labels and values."""
    if not items:
        return "<p class=muted>no data</p>"
    row_h, label_w = 26, 140
    top = max(value for _, value in items) or 1.0
    height = row_h * len(items) + 8
    parts = [_svg_open(width, height, label)]
    for i, (name, value) in enumerate(items):
        y = 4 + i * row_h
        bar_w = (width - label_w - 70) * value / top
        parts.append(f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" font-size="13">'
                     f"{escape(name)}</text>")
        parts.append(f'<rect x="{label_w}" y="{y + 4}" width="{bar_w:.1f}" height="{row_h - 8}"'
                     f' rx="3" fill="{BAR}"><title>{escape(name)}: {value:,.0f}{unit}</title>'
                     "</rect>")
        parts.append(f'<text x="{label_w + bar_w + 6:.1f}" y="{y + 17}" font-size="12" '
                     f'fill="#333">{value:,.0f}{escape(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram(counts: Sequence[int], edges: Sequence[float], *, label: str, x_label: str,
              fmt: str = "{:.1f}", width: int = 460, height: int = 220) -> str:
    """Vertical bars for ``counts`` between ``edges`` (len(edges) = len(counts) + 1)."""
    if not counts or sum(counts) == 0:
        return "<p class=muted>no data</p>"
    left, bottom, top_pad = 44, 40, 10
    plot_w, plot_h = width - left - 10, height - bottom - top_pad
    top = max(counts)
    bar_w = plot_w / len(counts)
    parts = [_svg_open(width, height, label),
             f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{left + plot_w}" '
             f'y2="{top_pad + plot_h}" stroke="#999"/>']
    for tick in (0, top // 2, top):
        y = top_pad + plot_h - plot_h * tick / top
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
                     f'fill="#555">{tick:,}</text>')
    for i, count in enumerate(counts):
        h = plot_h * count / top
        x = left + i * bar_w
        tip = f"{fmt.format(edges[i])}–{fmt.format(edges[i + 1])}: {count:,}"
        parts.append(f'<rect x="{x + 1:.1f}" y="{top_pad + plot_h - h:.1f}" '
                     f'width="{bar_w - 2:.1f}" height="{h:.1f}" fill="{BAR}">'
                     f"<title>{escape(tip)}</title></rect>")
    for i in range(0, len(edges), max(1, len(edges) // 5)):
        x = left + i * bar_w
        anchor = "end" if i == len(edges) - 1 else "middle"  # keep the last tick inside
        parts.append(f'<text x="{x:.1f}" y="{top_pad + plot_h + 16}" text-anchor="{anchor}" '
                     f'font-size="11" fill="#555">{escape(fmt.format(edges[i]))}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" '
                 f'font-size="12">{escape(x_label)}</text></svg>')
    return "".join(parts)


def heatmap(rows: Sequence[tuple[str, int, Sequence[float]]], *, label: str,
            width: int = 900) -> str:
    """Cohort retention: one row per cohort, one cell per month after the first purchase."""
    if not rows:
        return "<p class=muted>no cohorts yet</p>"
    months = max(len(r[2]) for r in rows)
    label_w, cell_h, head = 120, 22, 24
    cell_w = min(56.0, (width - label_w - 10) / max(months, 1))
    height = head + cell_h * len(rows) + 46
    parts = [_svg_open(width, height, label)]
    for k in range(months):
        parts.append(f'<text x="{label_w + k * cell_w + cell_w / 2:.1f}" y="{head - 8}" '
                     f'text-anchor="middle" font-size="11" fill="#555">{k}</text>')
    for i, (cohort, size, shares) in enumerate(rows):
        y = head + i * cell_h
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" font-size="12">'
                     f"{escape(cohort)} ({size:,})</text>")
        for k, share in enumerate(shares):
            x = label_w + k * cell_w
            parts.append(f'<rect x="{x:.1f}" y="{y}" width="{cell_w - 1:.1f}" '
                         f'height="{cell_h - 1}" fill="{_shade(share)}"><title>'
                         f"{escape(cohort)}, month {k}: {share:.1%}</title></rect>")
            if cell_w >= 34:
                ink = "#fff" if share > 0.45 else "#222"
                parts.append(f'<text x="{x + cell_w / 2:.1f}" y="{y + 15}" font-size="10" '
                             f'text-anchor="middle" fill="{ink}">{share:.0%}</text>')
    parts.append(_legend(label_w, head + cell_h * len(rows) + 12))
    parts.append("</svg>")
    return "".join(parts)


def _legend(x: float, y: float) -> str:
    parts = [f'<text x="{x - 8}" y="{y + 12}" text-anchor="end" font-size="11">'
             "share buying</text>"]
    for i, share in enumerate((0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)):
        parts.append(f'<rect x="{x + i * 46}" y="{y}" width="44" height="16" '
                     f'fill="{_shade(share)}"/>')
        parts.append(f'<text x="{x + i * 46 + 22}" y="{y + 28}" text-anchor="middle" '
                     f'font-size="10" fill="#555">{share:.0%}</text>')
    return "".join(parts)


def _shade(share: float) -> str:
    # White → deep blue; a square root so the small shares that matter stay visible.
    t = max(0.0, min(1.0, share)) ** 0.5
    r, g, b = (int(255 + (end - 255) * t) for end in (24, 78, 140))
    return f"#{r:02x}{g:02x}{b:02x}"


def _svg_open(width: int, height: int, label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" style="{FONT}" role="img" '
            f'aria-label="{escape(label)}">')

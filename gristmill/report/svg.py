"""Charts as standalone SVG text: no scripts, no external resources, readable in any browser."""

from __future__ import annotations

import math


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round-numbered ticks covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 10))
    return ticks


def loss_svg(series: dict[str, dict[int, float]], title: str, width: int = 640, height: int = 320) -> str:
    """A line chart of loss vs step as standalone SVG text (no scripts, no external resources)."""
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    points = [(s, v) for d in series.values() for s, v in d.items()]
    left, right, top, bottom = 56, 16, 32, 40
    pw, ph = width - left - right, height - top - bottom
    xs = [p[0] for p in points] or [0, 1]
    ys = [p[1] for p in points] or [0, 1]
    xt = nice_ticks(min(0, min(xs)), max(xs) if max(xs) > 0 else 1)
    yt = nice_ticks(min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1)
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def X(s: float) -> float:
        return left + (s - x0) / (x1 - x0) * pw

    def Y(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2:.0f}" y="18" text-anchor="middle" font-size="13">{_esc(title)}</text>']
    for t in yt:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{Y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    for t in xt:
        out.append(f'<line x1="{X(t):.1f}" x2="{X(t):.1f}" y1="{top}" y2="{top + ph}" stroke="#f0f0f0"/>')
        out.append(f'<text x="{X(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{t:g}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    out.append(f'<text x="{left + pw / 2:.0f}" y="{height - 6}" text-anchor="middle">step</text>')
    out.append(f'<text x="14" y="{top + ph / 2:.0f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + ph / 2:.0f})">loss (nats/token)</text>')
    for i, (name, d) in enumerate(series.items()):
        if not d:
            continue
        color = colors[i % len(colors)]
        pts = " ".join(f"{X(s):.1f},{Y(v):.1f}" for s, v in d.items())
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{pts}"/>')
        if len(d) <= 60:
            out += [f'<circle cx="{X(s):.1f}" cy="{Y(v):.1f}" r="2.5" fill="{color}"/>' for s, v in d.items()]
        ly = top + 12 + 16 * i
        out.append(f'<line x1="{left + pw - 110}" x2="{left + pw - 90}" y1="{ly}" y2="{ly}" '
                   f'stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{left + pw - 84}" y="{ly + 4}">{_esc(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
